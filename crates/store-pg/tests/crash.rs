//! SIGKILL after commit: a child process commits state changes with their messages and is
//! killed before any relay ran; another process relays every one of them, in commit order.
//! Its own `main` (harness = false): run with a database URL argument, it is the child.

use std::io::{BufRead as _, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay_bus::{Bus, Outgoing, QueueSpec, Sealer, TopicPattern};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_model::{SchemaRef, Sender, TopicRoot, Uuid};
use patchbay_store_pg::{PgStore, Relay};

const COMMITS: u64 = 20;

fn env_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

fn message(n: u64) -> Outgoing {
    Outgoing {
        sender: Sender::new("ingest", "crash"),
        topic: TopicRoot::new("pbtest", "crash").unwrap().topic("mail.message.received").unwrap(),
        schema: SchemaRef { name: "pgtest".into(), version: 1 },
        body: serde_json::json!({ "n": n }),
    }
}

/// The child: commits, says so, and waits to be killed.
async fn child(url: &str) {
    let store = PgStore::connect(url, 2, Sealer::default()).await.unwrap();
    for i in 0..COMMITS {
        store.transaction(async |tx| tx.publish(vec![message(i)]).await).await.unwrap();
    }
    println!("COMMITTED");
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
}

async fn parent() {
    let admin = env_url("PATCHBAY_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres");
    let url = patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"));

    let mut child =
        std::process::Command::new(std::env::current_exe().unwrap()).arg(&url).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !line.contains("COMMITTED") {
        assert!(Instant::now() < deadline, "the child never committed");
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child exited before committing");
    }
    child.kill().unwrap(); // SIGKILL: no cleanup, and no relay ran
    child.wait().unwrap();

    let store = PgStore::connect(&url, 2, Sealer::default()).await.unwrap();
    let ns = format!("pbpg{}", Uuid::now_v7().simple());
    let state = tempfile::tempdir().unwrap();
    let amqp = env_url("PATCHBAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let mut config = AmqpConfig::new(amqp.clone(), state.path());
    config.exchange = ns.clone();
    config.queue_expiry = Some(Duration::from_secs(600));
    let bus: Arc<dyn Bus> = Arc::new(
        AmqpBus::connect(config, Sealer::default())
            .await
            .unwrap_or_else(|e| panic!("no RabbitMQ at {amqp} ({e}); run scripts/test, or set PATCHBAY_TEST_AMQP_URL")),
    );
    let mut sub = bus.subscribe(QueueSpec::new(format!("{ns}.all"), vec![TopicPattern::parse("pbtest.crash.#").unwrap()])).await.unwrap();
    let relay = Relay::new(store, bus.clone());
    assert_eq!(relay.waiting().await.unwrap(), COMMITS as i64, "the commits outlived their process");
    assert_eq!(relay.step().await.unwrap(), COMMITS as usize, "another process relays them");
    let mut got = Vec::new();
    while got.len() < COMMITS as usize {
        let d = tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("relayed messages arrive").unwrap();
        got.push(d.envelope.seq);
        d.ack().await.unwrap();
    }
    assert_eq!(got, (1..=COMMITS).collect::<Vec<u64>>(), "in commit order");
    assert_eq!(relay.waiting().await.unwrap(), 0);
    println!("test a_process_killed_after_its_commits_loses_none_of_their_messages ... ok");
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // libtest's own arguments (`--nocapture`, filters) start with `-` or name tests; a URL is the child's.
    match std::env::args().nth(1).filter(|a| a.starts_with("postgres://")) {
        Some(url) => runtime.block_on(child(&url)),
        None => runtime.block_on(parent()),
    }
}
