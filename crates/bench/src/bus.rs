//! `patchbay-bench bus`: durable publish + consume + ack throughput with
//! concurrent publishers, and publish-to-delivery latency at a steady rate, on
//! the embedded bus in a scratch directory; with `--backend amqp` or `both`, the
//! same latency run on RabbitMQ in the same process, so the two compare under one
//! load (printed beside them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use patchbay_bus::{Bus, Consumer, Outgoing, QueueSpec, Sealer, SigningKey, TopicPattern, TrustPolicy};
use patchbay_model::{SchemaRef, Sender, TopicRoot};
use patchbay_store::EmbeddedBus;
use serde::Serialize;

/// Options of `patchbay-bench bus`.
#[derive(Clone, Debug, clap::Args)]
pub struct BusBench {
    /// Messages in the throughput run.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent publishers in the throughput run.
    #[arg(long, default_value_t = 64)]
    publishers: u64,
    /// Rate of the latency run, messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Pause between the throughput and latency runs (milliseconds).
    #[arg(long, default_value_t = 0)]
    settle_ms: u64,
    /// Do not sign messages (they are signed by default, as in production).
    #[arg(long)]
    unsigned: bool,
    /// Verify every signature on the consumer side (require_signatures = true).
    #[arg(long)]
    verify: bool,
    /// Scratch directory (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    /// Where the latency runs go: the embedded bus, RabbitMQ, or both in turn.
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    backend: Backend,
    /// Latency runs per backend (each `--seconds` long), alternated between backends.
    #[arg(long, default_value_t = 1)]
    latency_runs: u32,
    /// Also run the disk's bound beside each embedded run: 1 KiB appended and `fdatasync`ed at
    /// the same rate in the same directory (what one durable commit needs at least).
    #[arg(long)]
    disk_probe: bool,
    /// The broker of `--backend amqp`.
    #[arg(long, env = "PATCHBAY_TEST_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
}

/// The bus a latency run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Embedded,
    Amqp,
    Both,
}

/// One latency run: where, and its percentiles.
#[derive(Serialize)]
struct LatencyRun {
    backend: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Until the publish returned (durable: fsynced, or confirmed by the broker).
    publish_p50_ms: f64,
    publish_p99_ms: f64,
    load_average: String,
}

#[derive(Serialize)]
struct Figures {
    messages: u64,
    body_bytes: usize,
    publishers: u64,
    signed: bool,
    verified: bool,
    throughput_seconds: f64,
    throughput_msg_per_s: f64,
    latency_rate_msg_per_s: u64,
    latency_messages: u64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    /// Every latency run, in the order run.
    latency_runs: Vec<LatencyRun>,
}

/// Makes the benchmark's messages: about `size` bytes of body, stamped with nanoseconds since
/// `epoch` (for latency), each publisher its own sender.
pub fn maker(root: &TopicRoot, size: usize, epoch: Instant) -> anyhow::Result<impl Fn(u64, u64) -> Outgoing + Clone + Send + 'static> {
    let topic = root.topic("bench.message.sent")?;
    let pad = "x".repeat(size.saturating_sub(48));
    Ok(move |n: u64, publisher: u64| Outgoing {
        sender: Sender::new("bench", format!("p{publisher}")),
        topic: topic.clone(),
        schema: SchemaRef { name: "patchbay.bench".into(), version: 1 },
        body: serde_json::json!({ "n": n, "t": epoch.elapsed().as_nanos() as u64, "pad": pad }),
    })
}

/// Runs the benchmark and prints its figures.
pub async fn run(opts: BusBench) -> anyhow::Result<()> {
    anyhow::ensure!(opts.messages > 0 && opts.publishers > 0, "--messages and --publishers must be at least 1");
    anyhow::ensure!(opts.rate > 0 && opts.seconds > 0, "--rate and --seconds must be at least 1");
    let scratch = match &opts.dir {
        Some(_) => None,
        None => Some(tempfile_dir()?),
    };
    let dir = opts.dir.clone().unwrap_or_else(|| scratch.as_ref().unwrap().clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = if opts.unsigned { None } else { Some(Arc::new(SigningKey::generate("bench")?)) };
    let root = TopicRoot::new("patchbay", "bench")?;
    let mut policy = TrustPolicy::new(opts.verify);
    if let Some(k) = &key {
        policy.trust(k.public());
        policy.allow(k.id(), vec![TopicPattern::parse("#")?]);
    }
    let policy = Arc::new(policy);
    let bus = Arc::new(EmbeddedBus::open(&dir, Sealer::new(key.clone()))?);
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    let epoch = Instant::now();
    let make = maker(&root, opts.size, epoch)?;

    // Throughput: concurrent publishers, consumers ack each delivery in its own task.
    let pattern = TopicPattern::parse(&format!("{}.bench.message.#", root.as_str()))?;
    let elapsed = throughput(
        &dyn_bus,
        policy.clone(),
        Workload { queue: "bench-throughput", pattern, total: opts.messages, publishers: opts.publishers, progress: !opts.json },
        make.clone(),
    )
    .await?;
    let total = opts.messages;
    let pending = bus.pending("bench-throughput").await?;
    anyhow::ensure!(pending == 0, "{pending} deliveries still pending after every ack returned");

    // Latency: one publisher at a steady rate, after the burst's writeback has settled.
    tokio::time::sleep(Duration::from_millis(opts.settle_ms)).await;
    let amqp = match opts.backend {
        Backend::Embedded => None,
        Backend::Amqp | Backend::Both => {
            let ns = format!("benchlat{}", patchbay_model::Uuid::now_v7().simple());
            let mut config = patchbay_bus_amqp::AmqpConfig::new(opts.amqp_url.clone(), dir.join("amqp-seq"));
            config.exchange = ns;
            config.queue_expiry = Some(Duration::from_secs(600));
            let bus: Arc<dyn Bus> = Arc::new(patchbay_bus_amqp::AmqpBus::connect(config, Sealer::new(key.clone())).await?);
            Some(bus)
        }
    };
    let mut runs = Vec::new();
    for round in 0..opts.latency_runs.max(1) {
        let contenders: Vec<(&'static str, &Arc<dyn Bus>)> = match (opts.backend, &amqp) {
            (Backend::Embedded, _) | (_, None) => vec![("embedded", &dyn_bus)],
            (Backend::Amqp, Some(a)) => vec![("amqp", a)],
            (Backend::Both, Some(a)) => vec![("embedded", &dyn_bus), ("amqp", a)],
        };
        for (name, bus) in contenders {
            if name == "embedded" && opts.disk_probe {
                let (dir, rate, seconds) = (dir.clone(), opts.rate, opts.seconds);
                let syncs = tokio::task::spawn_blocking(move || disk_probe(&dir, rate, seconds)).await??;
                // A sync is both the delivery and the durability of the disk's own "publish".
                runs.push(LatencyRun::of("disk (1 KiB append + fdatasync)", syncs.clone(), syncs));
            }
            // RabbitMQ's queues outlive a run (and a queue name is the broker's, not the exchange's).
            let queue = format!("bench-latency-{name}-{round}-{}", patchbay_model::Uuid::now_v7().simple());
            let (samples, durable) = latency(bus, policy.clone(), &root, &queue, (make.clone(), epoch), opts.rate, opts.seconds).await?;
            runs.push(LatencyRun::of(name, samples, durable));
        }
    }
    let n_latency = opts.rate * opts.seconds;
    let first = &runs[0];
    let figures = Figures {
        messages: total,
        body_bytes: opts.size,
        publishers: opts.publishers,
        signed: key.is_some(),
        verified: opts.verify,
        throughput_seconds: elapsed.as_secs_f64(),
        throughput_msg_per_s: total as f64 / elapsed.as_secs_f64(),
        latency_rate_msg_per_s: opts.rate,
        latency_messages: n_latency,
        latency_p50_ms: first.p50_ms,
        latency_p99_ms: first.p99_ms,
        latency_max_ms: first.max_ms,
        latency_runs: runs,
    };
    drop(amqp);
    drop(dyn_bus);
    drop(bus);
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    if opts.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        println!(
            "bus throughput: {} messages of {} B, {} publishers, signed={} verified={}: {:.2} s, {:.0} msg/s",
            figures.messages,
            figures.body_bytes,
            figures.publishers,
            figures.signed,
            figures.verified,
            figures.throughput_seconds,
            figures.throughput_msg_per_s
        );
        for run in &figures.latency_runs {
            println!(
                "bus latency ({}) at {} msg/s over {} messages: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; publish durable p50 {:.2} ms, p99 {:.2} ms (load {})",
                run.backend,
                figures.latency_rate_msg_per_s,
                figures.latency_messages,
                run.p50_ms,
                run.p99_ms,
                run.max_ms,
                run.publish_p50_ms,
                run.publish_p99_ms,
                run.load_average
            );
        }
    }
    Ok(())
}

impl LatencyRun {
    /// The run of `backend` from its delivery times and its publishes' times to durable, in
    /// nanoseconds, with the load average now.
    fn of(backend: &'static str, mut samples: Vec<u64>, mut durable: Vec<u64>) -> LatencyRun {
        samples.sort_unstable();
        durable.sort_unstable();
        let at = |v: &[u64], p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1e6;
        LatencyRun {
            backend,
            p50_ms: at(&samples, 0.50),
            p99_ms: at(&samples, 0.99),
            max_ms: at(&samples, 1.0),
            publish_p50_ms: at(&durable, 0.50),
            publish_p99_ms: at(&durable, 0.99),
            load_average: load_average(),
        }
    }
}

/// The machine's load averages (1, 5, 15 minutes), as `/proc/loadavg` gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The disk's bound for a durable commit, in `dir`: 1 KiB appended and `fdatasync`ed `rate`
/// times a second for `seconds`; each sync's time in nanoseconds.
fn disk_probe(dir: &std::path::Path, rate: u64, seconds: u64) -> anyhow::Result<Vec<u64>> {
    use std::io::Write as _;
    let path = dir.join("disk-probe");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let (block, start) = (vec![b'x'; 1024], Instant::now());
    let mut syncs = Vec::with_capacity((rate * seconds) as usize);
    for i in 0..rate * seconds {
        if let Some(wait) = (start + interval * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let began = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        syncs.push(began.elapsed().as_nanos() as u64);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(syncs)
}

/// One latency run on `bus`: a publisher at `rate` messages per second for `seconds`, one
/// consumer acking each; the publish-to-delivery time of every message and the time each
/// publish took to be durable, in nanoseconds (`make` stamps each with the nanoseconds since
/// `epoch`).
async fn latency<F>(
    bus: &Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    root: &TopicRoot,
    queue: &str,
    (make, epoch): (F, Instant),
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(Vec<u64>, Vec<u64>)>
where
    F: Fn(u64, u64) -> Outgoing + Clone + Send + 'static,
{
    let sub = bus
        .subscribe(QueueSpec::new(queue, vec![TopicPattern::parse(&format!("{}.bench.latency.#", root.as_str()))?]).prefetch(256))
        .await?;
    let mut consumer = Consumer::new(sub, policy);
    let latency_topic = root.topic("bench.latency.sent")?;
    let n_latency = rate * seconds;
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let receiver = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(n_latency as usize);
        let mut acks = tokio::task::JoinSet::new();
        for _ in 0..n_latency {
            let d = consumer.next().await?;
            let sent = d.envelope.body["t"].as_u64().unwrap_or(0);
            samples.push((epoch.elapsed().as_nanos() as u64).saturating_sub(sent));
            acks.spawn(d.ack());
            while let Some(r) = acks.try_join_next() {
                r??;
            }
        }
        while let Some(r) = acks.join_next().await {
            r??;
        }
        anyhow::Ok(samples)
    });
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    let mut durable = Vec::with_capacity(n_latency as usize);
    for i in 0..n_latency {
        ticker.tick().await;
        let bus = bus.clone();
        let mut out = make(i, 0);
        out.topic = latency_topic.clone();
        inflight.spawn(async move {
            let began = Instant::now();
            bus.publish(vec![out]).await.map(|_| began.elapsed().as_nanos() as u64)
        });
        while let Some(r) = inflight.try_join_next() {
            durable.push(r??);
        }
    }
    while let Some(r) = inflight.join_next().await {
        durable.push(r??);
    }
    Ok((receiver.await??, durable))
}

/// One throughput run: which queue and topics, how many messages, how many publishers.
pub struct Workload<'a> {
    /// The queue the consumer takes messages from.
    pub queue: &'a str,
    /// The pattern bound to it.
    pub pattern: TopicPattern,
    /// Messages in the run.
    pub total: u64,
    /// Concurrent publishers.
    pub publishers: u64,
    /// Print progress to stderr.
    pub progress: bool,
}

/// Publishes `total` messages from `publishers` concurrent tasks (each waiting for its publish
/// to be durable) while one consumer takes them and acks each in its own task; returns the time
/// until the last ack returned.
pub async fn throughput<F>(bus: &Arc<dyn Bus>, policy: Arc<TrustPolicy>, work: Workload<'_>, make: F) -> anyhow::Result<Duration>
where
    F: Fn(u64, u64) -> Outgoing + Clone + Send + 'static,
{
    let Workload { queue, pattern, total, publishers, progress } = work;
    let sub = bus.subscribe(QueueSpec::new(queue, vec![pattern]).prefetch(1024)).await?;
    let mut consumer = Consumer::new(sub, policy);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..publishers {
        let bus = bus.clone();
        let make = make.clone();
        let count = total / publishers + u64::from(p < total % publishers);
        tasks.spawn(async move {
            for i in 0..count {
                bus.publish(vec![make(i, p)]).await?;
            }
            anyhow::Ok(())
        });
    }
    let consuming = tokio::spawn(async move {
        let mut acks = tokio::task::JoinSet::new();
        for n in 0..total {
            let d = consumer.next().await?;
            acks.spawn(d.ack());
            while let Some(r) = acks.try_join_next() {
                r??;
            }
            if progress && n > 0 && n % 20_000 == 0 {
                eprintln!("  {n} consumed");
            }
        }
        while let Some(r) = acks.join_next().await {
            r??;
        }
        anyhow::Ok(())
    });
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    consuming.await??;
    Ok(started.elapsed())
}

/// User + system CPU seconds in a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` line
/// (fields 14 and 15, counted after the command name, which may hold spaces).
pub fn stat_cpu_seconds(stat: &str) -> f64 {
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A new scratch directory for a benchmark's stores; the caller removes it.
pub fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("patchbay-bench-{}", patchbay_model::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
