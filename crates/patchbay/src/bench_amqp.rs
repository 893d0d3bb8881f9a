//! `patchbay bench amqp`: in one run on one machine, the same workload (1 KiB
//! messages, concurrent publishers each waiting for the broker's confirm, one
//! consumer acking every message) through a raw lapin client, through our
//! RabbitMQ bus, and through the embedded bus, so our overhead and the ratio
//! between the two shapes come from the same conditions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use patchbay_bus::{Bus, Sealer, SigningKey, TopicPattern, TrustPolicy};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_model::TopicRoot;
use patchbay_store::EmbeddedBus;
use serde::Serialize;

/// Options of `patchbay bench amqp`.
#[derive(Clone, Debug, clap::Args)]
pub struct AmqpBench {
    /// The broker.
    #[arg(long, env = "PATCHBAY_TEST_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Messages per contender.
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 64)]
    publishers: u64,
    /// Rounds of raw lapin and our bus, alternated so drift on a shared machine hits both; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Figures {
    messages: u64,
    body_bytes: usize,
    publishers: u64,
    raw_lapin_msg_per_s: f64,
    patchbay_amqp_unsigned_msg_per_s: f64,
    patchbay_amqp_signed_msg_per_s: f64,
    embedded_signed_msg_per_s: f64,
    /// Time through our RabbitMQ bus (unsigned) over raw lapin's, minus one.
    amqp_overhead: f64,
    /// Embedded throughput over RabbitMQ throughput, both through the trait, both signed.
    embedded_over_amqp: f64,
}

async fn raw_lapin(opts: &AmqpBench, ns: &str) -> anyhow::Result<Duration> {
    let conn = Connection::connect(&opts.url, ConnectionProperties::default()).await.context("connecting to RabbitMQ")?;
    let publisher = conn.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    publisher
        .exchange_declare(
            ns.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let queue = format!("{ns}.raw");
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
    let consumer_channel = conn.create_channel().await?;
    consumer_channel.basic_qos(1024, BasicQosOptions::default()).await?;
    consumer_channel.queue_declare(queue.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await?;
    consumer_channel
        .queue_bind(queue.as_str().into(), ns.into(), "raw.#".into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    let mut consumer =
        consumer_channel.basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    // The same application work as through our bus: build a JSON body per publish, decode it per delivery.
    let pad = Arc::new("x".repeat(opts.size.saturating_sub(48)));
    let total = opts.messages;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..opts.publishers {
        let (channel, pad, ns) = (publisher.clone(), pad.clone(), ns.to_string());
        let count = total / opts.publishers + u64::from(p < total % opts.publishers);
        tasks.spawn(async move {
            for i in 0..count {
                let payload = serde_json::to_vec(&serde_json::json!({ "n": i, "t": 0u64, "pad": pad.as_str() }))?;
                let props = BasicProperties::default().with_delivery_mode(2);
                let confirm = channel
                    .basic_publish(ns.as_str().into(), "raw.message.sent".into(), BasicPublishOptions::default(), &payload, props)
                    .await?;
                anyhow::ensure!(confirm.await?.is_ack(), "nacked");
            }
            anyhow::Ok(())
        });
    }
    let consuming = tokio::spawn(async move {
        let mut acks = tokio::task::JoinSet::new();
        for _ in 0..total {
            let d = consumer.next().await.context("consumer ended")??;
            let body: serde_json::Value = serde_json::from_slice(&d.data)?;
            anyhow::ensure!(body["n"].is_u64(), "not our message");
            acks.spawn(async move { d.acker.ack(lapin::options::BasicAckOptions::default()).await });
            while let Some(r) = acks.try_join_next() {
                r??;
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
    let elapsed = started.elapsed();
    let _ = conn.close(200, "done".into()).await;
    Ok(elapsed)
}

async fn through_trait(opts: &AmqpBench, bus: Arc<dyn Bus>, root: &TopicRoot, queue: &str) -> anyhow::Result<Duration> {
    let pattern = TopicPattern::parse(&format!("{}.bench.#", root.as_str()))?;
    let work = crate::bench::Workload { queue, pattern, total: opts.messages, publishers: opts.publishers, progress: false };
    crate::bench::throughput(&bus, Arc::new(TrustPolicy::permissive()), work, crate::bench::maker(root, opts.size, Instant::now())?).await
}

async fn amqp_bus(opts: &AmqpBench, ns: &str, state: &std::path::Path, sealer: Sealer) -> anyhow::Result<Arc<dyn Bus>> {
    let mut config = AmqpConfig::new(opts.url.clone(), state);
    config.exchange = ns.to_string();
    config.queue_expiry = Some(Duration::from_secs(600));
    Ok(Arc::new(AmqpBus::connect(config, sealer).await?))
}

/// CPU seconds this process has used (user + system), to see what the client costs the machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the contenders one after another and prints the figures.
pub async fn run(opts: AmqpBench) -> anyhow::Result<()> {
    anyhow::ensure!(opts.messages > 0 && opts.publishers > 0, "--messages and --publishers must be at least 1");
    let scratch = crate::bench::tempfile_dir()?;
    let key = Arc::new(SigningKey::generate("bench")?);
    let rate = |d: Duration| opts.messages as f64 / d.as_secs_f64();
    let say = |what: &str, d: Duration| {
        if !opts.json {
            println!("{what:<46} {:>8.0} msg/s ({:.2} s)", rate(d), d.as_secs_f64());
        }
    };

    let (mut raws, mut ours) = (Vec::new(), Vec::new());
    for round in 0..opts.rounds.max(1) {
        let ns = format!("pbbench{}", patchbay_model::Uuid::now_v7().simple());
        let cpu = cpu_seconds();
        let raw = raw_lapin(&opts, &ns).await?;
        say(&format!("raw lapin (round {}), client cpu {:.2} s", round + 1, cpu_seconds() - cpu), raw);
        raws.push(raw);
        let ns = format!("pbbench{}", patchbay_model::Uuid::now_v7().simple());
        let root = TopicRoot::new("pbbench", &ns)?;
        let state = scratch.join(format!("a{round}"));
        let cpu = cpu_seconds();
        let unsigned = through_trait(&opts, amqp_bus(&opts, &ns, &state, Sealer::default()).await?, &root, &format!("{ns}.q")).await?;
        say(&format!("our bus, unsigned (round {}), client cpu {:.2} s", round + 1, cpu_seconds() - cpu), unsigned);
        ours.push(unsigned);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (raw, unsigned) = (median(&mut raws), median(&mut ours));

    let ns = format!("pbbench{}", patchbay_model::Uuid::now_v7().simple());
    let root = TopicRoot::new("pbbench", &ns)?;
    let signed =
        through_trait(&opts, amqp_bus(&opts, &ns, &scratch.join("b"), Sealer::new(Some(key.clone()))).await?, &root, &format!("{ns}.q"))
            .await?;
    say("patchbay RabbitMQ bus, signed", signed);

    let root = TopicRoot::new("pbbench", "embedded")?;
    let embedded_bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(&scratch.join("embedded"), Sealer::new(Some(key)))?);
    let embedded = through_trait(&opts, embedded_bus, &root, "bench").await?;
    say("patchbay embedded bus, signed", embedded);
    let _ = std::fs::remove_dir_all(&scratch);

    let figures = Figures {
        messages: opts.messages,
        body_bytes: opts.size,
        publishers: opts.publishers,
        raw_lapin_msg_per_s: rate(raw),
        patchbay_amqp_unsigned_msg_per_s: rate(unsigned),
        patchbay_amqp_signed_msg_per_s: rate(signed),
        embedded_signed_msg_per_s: rate(embedded),
        amqp_overhead: unsigned.as_secs_f64() / raw.as_secs_f64() - 1.0,
        embedded_over_amqp: rate(embedded) / rate(signed),
    };
    if opts.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        println!(
            "medians: raw lapin {:.0} msg/s, our RabbitMQ bus {:.0} msg/s: our overhead {:+.1}% (target at most +15%)",
            figures.raw_lapin_msg_per_s,
            figures.patchbay_amqp_unsigned_msg_per_s,
            figures.amqp_overhead * 100.0
        );
        println!("embedded / RabbitMQ, both signed through the trait: {:.2}x", figures.embedded_over_amqp);
    }
    Ok(())
}
