//! `patchbay-bench amqp`: in one run on one machine, the same workload (1 KiB
//! messages, concurrent publishers each waiting for the broker's confirm, one
//! consumer acking every message) through a raw lapin client, through our
//! RabbitMQ bus, and through the embedded bus, so our overhead and the ratio
//! between the two shapes come from the same conditions. The raw client
//! publishes the very messages our bus puts on the wire (see [`RawMessages`]),
//! so the overhead is our code's; one more raw run with bare bodies shows what
//! the envelope itself costs the broker.

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

/// Options of `patchbay-bench amqp`.
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
    /// Raw lapin publishing the same messages as our bus (envelope, properties, routing key).
    raw_lapin_msg_per_s: f64,
    /// Raw lapin publishing bare bodies of `body_bytes`.
    raw_lapin_bare_msg_per_s: f64,
    patchbay_amqp_unsigned_msg_per_s: f64,
    patchbay_amqp_signed_msg_per_s: f64,
    embedded_signed_msg_per_s: f64,
    /// Time through our RabbitMQ bus (unsigned) over raw lapin's with the same messages, minus one.
    amqp_overhead: f64,
    /// Time of raw lapin with our messages over raw lapin with bare bodies, minus one.
    envelope_cost: f64,
    /// Embedded throughput over RabbitMQ throughput, both through the trait, both signed.
    embedded_over_amqp: f64,
}

/// One contender's run: its time, and the context switches of this process meanwhile.
struct Run {
    elapsed: Duration,
    switches: u64,
}

/// What the raw lapin client publishes.
#[derive(Clone, Copy, PartialEq)]
enum RawMessages {
    /// The same messages as our bus puts on the wire: an envelope of the same fields and size
    /// around the same body, the same AMQP properties, a routing key of the same shape. The
    /// difference to our bus is then our code alone.
    LikeOurs,
    /// A bare 1 KiB JSON body with only `delivery_mode`: shows what the envelope costs.
    Bare,
}

async fn raw_lapin(opts: &AmqpBench, ns: &str, kind: RawMessages) -> anyhow::Result<Run> {
    let switches = context_switches();
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
        .queue_bind(
            queue.as_str().into(),
            ns.into(),
            format!("pbbench.{ns}.bench.#").into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
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
            let topic = format!("pbbench.{ns}.bench.message.sent");
            for i in 0..count {
                let body = serde_json::json!({ "n": i, "t": 0u64, "pad": pad.as_str() });
                let (payload, props) = match kind {
                    RawMessages::Bare => (serde_json::to_vec(&body)?, BasicProperties::default().with_delivery_mode(2)),
                    RawMessages::LikeOurs => {
                        let id = patchbay_model::Uuid::now_v7();
                        let sent_at = patchbay_model::Timestamp::now();
                        let envelope = serde_json::json!({
                            "id": id, "topic": topic, "sent_at": sent_at.to_string(),
                            "sender": { "service": "bench", "instance": format!("p{p}") }, "seq": i + 1,
                            "schema": { "name": "patchbay.bench", "version": 1 }, "body": body,
                        });
                        let props = BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type("application/json".into())
                            .with_message_id(id.to_string().into())
                            .with_timestamp((sent_at.as_micros() / 1_000_000).max(0) as u64)
                            .with_type("patchbay.bench.v1".into());
                        (serde_json::to_vec(&envelope)?, props)
                    }
                };
                let confirm = channel
                    .basic_publish(ns.as_str().into(), topic.as_str().into(), BasicPublishOptions::default(), &payload, props)
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
            let message: serde_json::Value = serde_json::from_slice(&d.data)?;
            let n = if kind == RawMessages::Bare { &message["n"] } else { &message["body"]["n"] };
            anyhow::ensure!(n.is_u64(), "not our message");
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
    let run = Run { elapsed: started.elapsed(), switches: context_switches() - switches };
    let _ = conn.close(200, "done".into()).await;
    Ok(run)
}

async fn through_trait(opts: &AmqpBench, bus: Arc<dyn Bus>, root: &TopicRoot, queue: &str) -> anyhow::Result<Run> {
    let switches = context_switches();
    let pattern = TopicPattern::parse(&format!("{}.bench.#", root.as_str()))?;
    let work = crate::bus::Workload { queue, pattern, total: opts.messages, publishers: opts.publishers, progress: false };
    let make = crate::bus::maker(root, opts.size, Instant::now())?;
    let elapsed = crate::bus::throughput(&bus, Arc::new(TrustPolicy::permissive()), work, make).await?;
    Ok(Run { elapsed, switches: context_switches() - switches })
}

async fn amqp_bus(opts: &AmqpBench, ns: &str, state: &std::path::Path, sealer: Sealer) -> anyhow::Result<Arc<dyn Bus>> {
    let mut config = AmqpConfig::new(opts.url.clone(), state);
    config.exchange = ns.to_string();
    config.queue_expiry = Some(Duration::from_secs(600));
    Ok(Arc::new(AmqpBus::connect(config, sealer).await?))
}

/// CPU seconds this process has used (user + system), to see what the client costs the machine.
fn cpu_seconds() -> f64 {
    crate::bus::stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// Context switches of this process's live threads so far. The profiles put the cost of a
/// bus client in waking threads, which CPU time alone hides.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let count = |status: String| -> u64 {
        status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    };
    tasks.flatten().filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok()).map(count).sum()
}

/// Runs the contenders one after another and prints the figures.
pub async fn run(opts: AmqpBench) -> anyhow::Result<()> {
    anyhow::ensure!(opts.messages > 0 && opts.publishers > 0, "--messages and --publishers must be at least 1");
    let scratch = crate::bus::tempfile_dir()?;
    let key = Arc::new(SigningKey::generate("bench")?);
    let rate = |d: Duration| opts.messages as f64 / d.as_secs_f64();
    let say = |what: &str, run: &Run, cpu: f64| {
        if !opts.json {
            let switches = run.switches as f64 / opts.messages as f64;
            let cpu = cpu * 1e6 / opts.messages as f64;
            println!(
                "{what:<40} {:>7.0} msg/s ({:.2} s; client: {cpu:.0} µs CPU, {switches:.2} context switches per message)",
                rate(run.elapsed),
                run.elapsed.as_secs_f64()
            );
        }
    };
    let ns = || format!("pbbench{}", patchbay_model::Uuid::now_v7().simple());

    let (mut raws, mut ours) = (Vec::new(), Vec::new());
    for round in 1..=opts.rounds.max(1) {
        let cpu = cpu_seconds();
        let raw = raw_lapin(&opts, &ns(), RawMessages::LikeOurs).await?;
        say(&format!("raw lapin, our messages (round {round})"), &raw, cpu_seconds() - cpu);
        raws.push(raw.elapsed);
        let ns = ns();
        let root = TopicRoot::new("pbbench", &ns)?;
        let state = scratch.join(format!("a{round}"));
        let cpu = cpu_seconds();
        let unsigned = through_trait(&opts, amqp_bus(&opts, &ns, &state, Sealer::default()).await?, &root, &format!("{ns}.q")).await?;
        say(&format!("our bus, unsigned (round {round})"), &unsigned, cpu_seconds() - cpu);
        ours.push(unsigned.elapsed);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (raw, unsigned) = (median(&mut raws), median(&mut ours));

    let cpu = cpu_seconds();
    let bare = raw_lapin(&opts, &ns(), RawMessages::Bare).await?;
    say("raw lapin, bare 1 KiB bodies", &bare, cpu_seconds() - cpu);

    let ns = ns();
    let root = TopicRoot::new("pbbench", &ns)?;
    let cpu = cpu_seconds();
    let signed =
        through_trait(&opts, amqp_bus(&opts, &ns, &scratch.join("b"), Sealer::new(Some(key.clone()))).await?, &root, &format!("{ns}.q"))
            .await?;
    say("our RabbitMQ bus, signed", &signed, cpu_seconds() - cpu);

    let root = TopicRoot::new("pbbench", "embedded")?;
    let embedded_bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(&scratch.join("embedded"), Sealer::new(Some(key)))?);
    let cpu = cpu_seconds();
    let embedded = through_trait(&opts, embedded_bus, &root, "bench").await?;
    say("our embedded bus, signed", &embedded, cpu_seconds() - cpu);
    let _ = std::fs::remove_dir_all(&scratch);

    let figures = Figures {
        messages: opts.messages,
        body_bytes: opts.size,
        publishers: opts.publishers,
        raw_lapin_msg_per_s: rate(raw),
        raw_lapin_bare_msg_per_s: rate(bare.elapsed),
        patchbay_amqp_unsigned_msg_per_s: rate(unsigned),
        patchbay_amqp_signed_msg_per_s: rate(signed.elapsed),
        embedded_signed_msg_per_s: rate(embedded.elapsed),
        amqp_overhead: unsigned.as_secs_f64() / raw.as_secs_f64() - 1.0,
        envelope_cost: raw.as_secs_f64() / bare.elapsed.as_secs_f64() - 1.0,
        embedded_over_amqp: rate(embedded.elapsed) / rate(signed.elapsed),
    };
    if opts.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        println!(
            "medians: raw lapin {:.0} msg/s, our RabbitMQ bus {:.0} msg/s, the same messages: our overhead {:+.1}% (target at most +15%)",
            figures.raw_lapin_msg_per_s,
            figures.patchbay_amqp_unsigned_msg_per_s,
            figures.amqp_overhead * 100.0
        );
        println!("the envelope (our messages over bare bodies, both raw lapin, one run): {:+.1}%", figures.envelope_cost * 100.0);
        println!("embedded / RabbitMQ, both signed through the trait: {:.2}x", figures.embedded_over_amqp);
    }
    Ok(())
}
