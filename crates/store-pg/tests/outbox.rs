//! The PostgreSQL store on a real PostgreSQL (`PATCHBAY_TEST_PG_URL`, which `scripts/test`
//! sets to a throwaway cluster) and a real RabbitMQ (`PATCHBAY_TEST_AMQP_URL`): they fail, never
//! skip, when either is missing. Each test works in a database of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay_bus::{Bus, Outgoing, QueueSpec, Sealer, TopicPattern};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_model::{SchemaRef, Sender, TopicRoot, Uuid};
use patchbay_store_pg::{PgError, PgStore, Relay, SCHEMA_VERSION};

fn pg_url() -> String {
    std::env::var("PATCHBAY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn amqp_url() -> String {
    std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A database of its own on the test cluster; its URL.
async fn fresh_database() -> String {
    let admin = pg_url();
    patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"))
}

/// A RabbitMQ bus on exchange `ns`, its sequence files in `dir`.
async fn rabbit(ns: &str, dir: &std::path::Path) -> Arc<dyn Bus> {
    let mut config = AmqpConfig::new(amqp_url(), dir);
    config.exchange = ns.to_string();
    config.queue_expiry = Some(Duration::from_secs(600));
    Arc::new(
        AmqpBus::connect(config, Sealer::default())
            .await
            .unwrap_or_else(|e| panic!("no RabbitMQ at {} ({e}); run scripts/test, or set PATCHBAY_TEST_AMQP_URL", amqp_url())),
    )
}

fn message(root: &TopicRoot, instance: &str, n: u64) -> Outgoing {
    Outgoing {
        sender: Sender::new("ingest", instance),
        topic: root.topic("mail.message.received").unwrap(),
        schema: SchemaRef { name: "pgtest".into(), version: 1 },
        body: serde_json::json!({ "n": n }),
    }
}

async fn count(store: &PgStore, sql: &str) -> i64 {
    store.client().await.unwrap().query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_state_change_and_its_messages_commit_or_roll_back_together() {
    let url = fresh_database().await;
    let store = PgStore::connect(&url, 4, Sealer::default()).await.unwrap();
    let root = TopicRoot::new("pbtest", "pg").unwrap();
    store
        .transaction::<_, PgError, _>(async |tx| Ok(tx.sql().batch_execute("CREATE TABLE things (name TEXT PRIMARY KEY)").await?))
        .await
        .unwrap();

    let sent = store
        .transaction(async |tx| {
            tx.sql().execute("INSERT INTO things VALUES ('a')", &[]).await?;
            tx.publish(vec![message(&root, "one", 1), message(&root, "one", 2)]).await
        })
        .await
        .unwrap();
    assert_eq!(sent.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2], "sequence numbers start at 1 per sender");

    let failed = store
        .transaction(async |tx| {
            tx.sql().execute("INSERT INTO things VALUES ('b')", &[]).await?;
            tx.publish(vec![message(&root, "one", 3)]).await?;
            Err::<(), _>(PgError::Unreachable("the handler failed after publishing".into()))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(count(&store, "SELECT count(*) FROM things").await, 1, "the failed change left nothing");
    assert_eq!(count(&store, "SELECT count(*) FROM outbox").await, 2, "nor its message");
    let ids: Vec<String> =
        store.client().await.unwrap().query("SELECT id FROM outbox ORDER BY pos", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, sent.iter().map(|e| e.id.to_string()).collect::<Vec<_>>());

    // The rolled-back transaction's sequence number is taken again: no gap for consumers.
    let next = store.transaction(async |tx| tx.publish(vec![message(&root, "one", 4)]).await).await.unwrap();
    assert_eq!(next[0].seq, 3);
}

#[tokio::test]
async fn processes_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let url = fresh_database().await;
    let starts: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { PgStore::connect(&url, 2, Sealer::default()).await.map(|_| ()) }
            })
        })
        .collect();
    for s in starts {
        s.await.unwrap().expect("every process starts");
    }
    let store = PgStore::connect(&url, 2, Sealer::default()).await.unwrap();
    assert_eq!(count(&store, "SELECT count(*) FROM schema_migrations").await, SCHEMA_VERSION as i64);

    store.client().await.unwrap().execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&(SCHEMA_VERSION + 1)]).await.unwrap();
    match PgStore::connect(&url, 2, Sealer::default()).await {
        Err(e @ PgError::TooNew { .. }) => assert!(!e.is_transient() && e.to_string().contains("upgrade patchbay"), "{e}"),
        other => panic!("a newer schema must be refused: {other:?}"),
    }
    // A database that does not exist is the operator's to mend: not retried.
    let (base, _) = url.rsplit_once('/').unwrap();
    let missing = PgStore::connect(&format!("{base}/pb_no_such_database"), 2, Sealer::default()).await.unwrap_err();
    assert!(!missing.is_transient(), "{missing}");
    let bad = PgStore::connect("postgres://[nowhere", 2, Sealer::default()).await.unwrap_err();
    assert!(matches!(bad, PgError::Config(_)) && bad.to_string().starts_with("store.url: "), "{bad}");
}

#[tokio::test]
async fn sequence_numbers_have_no_gap_or_repeat_under_concurrent_transactions() {
    let url = fresh_database().await;
    let store = PgStore::connect(&url, 8, Sealer::default()).await.unwrap();
    let root = TopicRoot::new("pbtest", "pg").unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let (store, root) = (store.clone(), root.clone());
            tokio::spawn(async move {
                for i in 0..25u64 {
                    store.transaction(async |tx| tx.publish(vec![message(&root, "same", t * 100 + i); 2]).await).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let client = store.client().await.unwrap();
    let mut seqs: Vec<u64> = Vec::new();
    for row in client.query("SELECT wire FROM outbox ORDER BY pos", &[]).await.unwrap() {
        seqs.push(patchbay_model::Envelope::from_wire(row.get(0)).unwrap().seq);
    }
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=400).collect::<Vec<u64>>(), "every number once, none skipped");
}

#[tokio::test]
async fn two_relays_send_every_committed_message_to_rabbitmq() {
    let url = fresh_database().await;
    let store = PgStore::connect(&url, 8, Sealer::default()).await.unwrap();
    let ns = format!("pbpg{}", Uuid::now_v7().simple());
    let root = TopicRoot::new("pbtest", &ns).unwrap();
    let state = tempfile::tempdir().unwrap();
    let bus = rabbit(&ns, &state.path().join("consumer")).await;
    let pattern = TopicPattern::parse(&format!("{}.#", root.as_str())).unwrap();
    let mut sub = bus.subscribe(QueueSpec::new(format!("{ns}.all"), vec![pattern]).prefetch(200)).await.unwrap();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut relays = Vec::new();
    for i in 0..2 {
        let relay = Relay::new(store.clone(), rabbit(&ns, &state.path().join(format!("relay{i}"))).await);
        let mut stopped = stopped.clone();
        relays.push(tokio::spawn(relay.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    // Writers commit while the relays run.
    let mut expected = HashSet::new();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (store, root) = (store.clone(), root.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..50u64 {
                    let sent = store.transaction(async |tx| tx.publish(vec![message(&root, &format!("w{w}"), i); 3]).await).await.unwrap();
                    ids.extend(sent.into_iter().map(|e| e.id));
                }
                ids
            })
        })
        .collect();
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    let mut seen: HashMap<Uuid, u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < expected.len() && Instant::now() < deadline {
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            *seen.entry(d.envelope.id).or_default() += 1;
            d.ack().await.unwrap();
        }
    }
    stop.send(true).unwrap();
    for r in relays {
        r.await.unwrap();
    }
    assert_eq!(expected.len(), 600);
    assert_eq!(seen.keys().copied().collect::<HashSet<_>>(), expected, "every committed message arrived");
    assert_eq!(count(&store, "SELECT count(*) FROM outbox WHERE relayed_at IS NULL").await, 0, "and is marked relayed");
    let again = seen.values().filter(|n| **n > 1).count();
    eprintln!("600 messages through 2 relays; {again} arrived more than once");
}

#[tokio::test]
async fn relayed_rows_are_pruned_after_a_day_and_waiting_ones_never() {
    let url = fresh_database().await;
    let store = PgStore::connect(&url, 4, Sealer::default()).await.unwrap();
    let root = TopicRoot::new("pbtest", "prune").unwrap();
    for i in 0..6 {
        store.transaction(async |tx| tx.publish(vec![message(&root, "p", i)]).await).await.unwrap();
    }
    let client = store.client().await.unwrap();
    // Two sent two days ago, two sent just now, two still waiting.
    client
        .execute("UPDATE outbox SET relayed_at = now() - interval '2 days' WHERE pos IN (SELECT pos FROM outbox ORDER BY pos LIMIT 2)", &[])
        .await
        .unwrap();
    client
        .execute(
            "UPDATE outbox SET relayed_at = now() WHERE pos IN (SELECT pos FROM outbox WHERE relayed_at IS NULL ORDER BY pos LIMIT 2)",
            &[],
        )
        .await
        .unwrap();
    let ns = format!("pbpg{}", Uuid::now_v7().simple());
    let state = tempfile::tempdir().unwrap();
    let relay = Relay::new(store.clone(), rabbit(&ns, state.path()).await);
    assert_eq!(relay.prune(patchbay_store_pg::KEEP_RELAYED).await.unwrap(), 2);
    assert_eq!(relay.prune(patchbay_store_pg::KEEP_RELAYED).await.unwrap(), 0, "once");
    assert_eq!(count(&store, "SELECT count(*) FROM outbox").await, 4);
    assert_eq!(relay.waiting().await.unwrap(), 2, "what waits is never pruned");
    assert_eq!(relay.prune(Duration::ZERO).await.unwrap(), 2, "everything relayed, with no grace");
    assert_eq!(relay.waiting().await.unwrap(), 2);
}
