//! Issue 15: services on PostgreSQL (`store.url`) and RabbitMQ, as separate processes. Two
//! `patchbay run aggregator` processes share one PostgreSQL and one queue, and a `run relay`
//! a `run logs` and a `run history` run beside them. The first results are published before any aggregator has
//! started (the relay declared every service's queue). Every result is delivered twice, and one aggregator is killed with
//! SIGKILL mid-run and started again. Each series still gets exactly one verdict, the right
//! one, and every row of the outbox reaches the broker. Services not yet on PostgreSQL, and
//! `serve` refuses `store.url` with a reason.
//!
//! The pipeline from mail to verdict on PostgreSQL: two `run ingest` hosts receive the same
//! mails over LMTP in opposite orders at once, two dispatchers, two runners, two
//! aggregators and two reporters share the work; each series exists once, is announced
//! complete once, tested once per test, gets one verdict, the right one, and one threaded
//! report mail with its own Message-ID. `inject` on a third host stores into the same database.
//!
//! Notifications on PostgreSQL: a rule added through `run web`'s admin API is in force in two
//! `run notify` processes; one delivers, and when it is killed with SIGKILL the other takes over:
//! every event reaches the webhook, a repeat only ever under the same delivery id. Needs a real PostgreSQL
//! (`PATCHBAY_TEST_PG_URL`) and RabbitMQ (`PATCHBAY_TEST_AMQP_URL`); fails, never skips,
//! without them.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{Proc, bin, free_port, http_get, http_method, received_hooks, start_receiver, wait_http, wait_log, wait_until};
use patchbay_bus::{Bus, Publisher, QueueSpec, Sealer, TopicPattern};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_model::{BaseUsed, Sender, SeriesHead, TestFinished, TestLog, TopicRoot};

const SERIES: i64 = 30;
/// Public series ids as `identity` derives them: in [2^52, 2^53).
const FIRST: i64 = 1 << 52;

fn finished(n: i64, test: &str, arch: &str, outcome: &str) -> TestFinished {
    TestFinished {
        job: format!("{}-v1-{test}-{arch}", FIRST + n),
        series: SeriesHead { id: FIRST + n, project: "demo".into(), name: format!("s{n}"), submitter: "a@x".into(), version: 1, total: 1 },
        test: test.into(),
        arch: arch.into(),
        required: true,
        outcome: outcome.into(),
        reason: None,
        failed_patch: None,
        duration_ms: 5,
        base: Some(BaseUsed { commit: "abc".into(), reason: "branch main".into() }),
        excerpt: String::new(),
        log_bytes: 0,
        retrying: false,
        pre_existing: false,
        round: 0,
        recheck: vec![],
    }
}

/// Odd series fail their build.
fn expected(n: i64) -> &'static str {
    if n % 2 == 1 { "FAILED" } else { "PASSED" }
}

/// What `/metrics` on `port` says the aggregator has handled.
fn handled(port: u16) -> u64 {
    let metrics = http_get(port, "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("patchbay_messages_handled_total{service=\"aggregator\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn write_config(path: &Path, data: &str, instance: &str, amqp: &str, ns: &str, pg: &str) {
    write_config_with(
        path,
        (data, instance),
        (amqp, ns, pg),
        "/nonexistent",
        "name = \"build\"\nscript = \"true\"\narches = [\"x86_64\"]\n",
    );
}

/// A host's config: its data directory and instance, the shared broker, namespace and database,
/// and one project of `repository` with `test`.
fn write_config_with(path: &Path, (data, instance): (&str, &str), (amqp, ns, pg): (&str, &str, &str), repository: &str, test: &str) {
    std::fs::write(
        path,
        format!(
            "data_dir = \"{data}\"\n[identity]\ninstance = \"{instance}\"\n\
             [bus]\nbackend = \"amqp\"\nurl = \"{amqp}\"\nexchange = \"{ns}\"\nprefix = \"e2e\"\nenv = \"{ns}\"\n\
             [store]\nurl = \"{pg}\"\nmax_connections = 4\n[runner]\njobs = 2\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"pg.lists.example.org\"]\nrepository = \"{repository}\"\n\
             [[project.test]]\n{test}"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregators_on_postgres_decide_once_through_redelivery_and_kill_9() {
    let amqp = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let admin = std::env::var("PATCHBAY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pg = patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"));
    let ns = format!("pgsvc{}x{}", std::process::id(), patchbay_model::Uuid::now_v7().simple());
    let tmp = tempfile::tempdir().unwrap();
    // Two hosts: a data directory (keys, sequence files) and an instance name each.
    let (a, b) = (tmp.path().join("a.toml"), tmp.path().join("b.toml"));
    write_config(&a, "data-a", "a", &amqp, &ns, &pg);
    write_config(&b, "data-b", "b", &amqp, &ns, &pg);

    // The embedded shape says it is not for a shared store instead of using SQLite behind the
    // operator's back.
    let out = bin().arg("--config").arg(&a).arg("serve").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("store.url") && err.contains("patchbay run"), "{err}");

    // The relay starts first: like every process on RabbitMQ it declares every service's
    // queue, so results published before any aggregator has ever run wait for one.
    let relay = Proc::start(&b, tmp.path(), "relay", &[]);
    wait_log(&relay, "Every service's queue declared");

    // The test is a runner: it publishes results and watches verdicts on the broker.
    let root = TopicRoot::new("e2e", &ns).unwrap();
    let mut config = AmqpConfig::new(amqp.clone(), tmp.path().join("runner-seq"));
    config.exchange = ns.clone();
    config.queue_expiry = Some(Duration::from_secs(600));
    let bus: Arc<dyn Bus> = Arc::new(AmqpBus::connect(config, Sealer::default()).await.expect("RabbitMQ"));
    let verdict_topic = root.topic("ci.series.verdict").unwrap();
    let mut watch = bus
        .subscribe(QueueSpec::new(format!("{ns}.watch"), vec![TopicPattern::parse(verdict_topic.as_str()).unwrap()]).prefetch(200))
        .await
        .unwrap();
    let runner = Publisher::new(bus.clone(), root.clone(), Sender::new("runner", "t"));
    let publish = async |n: i64| {
        for (test, arch, outcome) in [("apply", "any", "PASSED"), ("build", "x86_64", expected(n))] {
            let sealed = runner.publish(&finished(n, test, arch, outcome)).await.unwrap();
            // Delivered twice, as after a runner's crash before its ack: recorded once.
            bus.publish_sealed(vec![sealed]).await.unwrap();
        }
    };
    for n in 1..=SERIES / 3 {
        publish(n).await;
    }

    let (pa, pb) = (free_port(), free_port());
    // Aggregator A alone first, until it has handled some of what waited: the SIGKILL below
    // then lands on a process that has done work, with more on its way.
    let agg_a = Proc::start(&a, tmp.path(), "aggregator", &["--http", &format!("127.0.0.1:{pa}")]);
    wait_http(pa, "/readyz", "aggregator a", &[&agg_a]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while handled(pa) == 0 {
        assert!(Instant::now() < deadline, "aggregator a handled nothing of what waited in its queue:\n{}", agg_a.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let agg_b = Proc::start(&b, tmp.path(), "aggregator", &["--http", &format!("127.0.0.1:{pb}")]);
    let logs = Proc::start(&a, tmp.path(), "logs", &[]);
    let history = Proc::start(&b, tmp.path(), "history", &[]);
    wait_http(pb, "/readyz", "aggregator b", &[&agg_b]);
    wait_log(&agg_a, "Service started");
    wait_log(&agg_b, "Service started");
    wait_log(&logs, "Service started");
    wait_log(&history, "Service started");
    for n in SERIES / 3 + 1..=SERIES / 2 {
        publish(n).await;
    }
    agg_a.kill9();
    for n in SERIES / 2 + 1..=SERIES {
        publish(n).await;
    }
    let agg_a = Proc::start(&a, tmp.path(), "aggregator", &[]);
    // A job's log, in two chunks, the first delivered twice.
    for (index, last, text) in [(0, false, "building\n"), (0, false, "building\n"), (1, true, "TESTS PASSED\n")] {
        let chunk = TestLog { job: "job-1".into(), run: "run-1".into(), index, last, text: text.into() };
        runner.publish(&chunk).await.unwrap();
    }

    // Every verdict message, by id, and what it said per series.
    let mut messages: HashMap<patchbay_model::Uuid, (i64, String)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut quiet_until = None;
    loop {
        let series: HashSet<i64> = messages.values().map(|(s, _)| *s).collect();
        if series.len() as i64 == SERIES && quiet_until.is_none() {
            // Everything came: listen a little longer for a second verdict.
            quiet_until = Some(Instant::now() + Duration::from_secs(3));
        }
        if quiet_until.is_some_and(|t| Instant::now() > t) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "verdicts for {} of {SERIES} series:\n--- a:\n{}\n--- b:\n{}",
            series.len(),
            agg_a.stderr(),
            agg_b.stderr()
        );
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
            let body = &d.envelope.body;
            messages.insert(d.envelope.id, (body["series"]["id"].as_i64().unwrap() - FIRST, body["verdict"].as_str().unwrap().to_string()));
            d.ack().await.unwrap();
        }
    }
    let mut per_series: HashMap<i64, Vec<String>> = HashMap::new();
    for (series, verdict) in messages.into_values() {
        per_series.entry(series).or_default().push(verdict);
    }
    for n in 1..=SERIES {
        assert_eq!(per_series.get(&n), Some(&vec![expected(n).to_string()]), "series {n}: one verdict, the right one");
    }

    // The store agrees: each result once, each verdict once, the outbox all relayed.
    let store = patchbay_store_pg::PgStore::connect(&pg, 2, Sealer::default()).await.unwrap();
    let client = store.client().await.unwrap();
    let count = async |sql: &str| -> i64 { client.query_one(sql, &[]).await.unwrap().get(0) };
    assert_eq!(count("SELECT count(*) FROM results").await, 2 * SERIES, "each result recorded once");
    assert_eq!(count("SELECT count(*) FROM verdicts WHERE verdict IS NOT NULL").await, SERIES);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("SELECT count(*) FROM outbox WHERE relayed_at IS NULL").await > 0 {
        assert!(Instant::now() < deadline, "the outbox drains");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("SELECT count(*) FROM test_logs").await < 2 {
        assert!(Instant::now() < deadline, "the log chunks reach PostgreSQL:\n{}", logs.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = patchbay_logs::LogStore::on_postgres(store.clone()).read("job-1").await.unwrap().unwrap();
    assert_eq!((log.text.as_str(), log.complete), ("building\nTESTS PASSED\n", true));
    // The history kept every message once, those sent before it started too.
    let deadline = Instant::now() + Duration::from_secs(30);
    let kept = async |suffix: &str| -> i64 {
        client.query_one("SELECT count(*) FROM history WHERE topic LIKE '%.' || $1", &[&suffix]).await.unwrap().get(0)
    };
    while kept("ci.series.verdict").await < SERIES || kept("ci.result.recorded").await < 2 * SERIES {
        assert!(Instant::now() < deadline, "the history records everything:\n{}", history.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(kept("ci.test.finished").await, 2 * SERIES, "each result once, though delivered twice");
    assert_eq!(kept("ci.series.verdict").await, SERIES);
    drop((agg_a, agg_b, relay, logs, history));
}

/// Collects the bodies that reach `watch` until `done` holds of them, then listens 3 s more
/// for anything doubled.
async fn collect(
    watch: &mut Box<dyn patchbay_bus::Subscription>,
    what: &str,
    procs: &[&Proc],
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut seen: HashMap<patchbay_model::Uuid, serde_json::Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut quiet_until = None;
    loop {
        let bodies: Vec<serde_json::Value> = seen.values().cloned().collect();
        if quiet_until.is_none() && done(&bodies) {
            quiet_until = Some(Instant::now() + Duration::from_secs(3));
        }
        if quiet_until.is_some_and(|t| Instant::now() > t) {
            return bodies;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.stderr()).collect();
            panic!("{what}: {} so far\n{}", bodies.len(), logs.join("\n-----\n"));
        }
        if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
            seen.insert(d.envelope.id, d.envelope.body.clone());
            d.ack().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_to_verdict_on_postgres_with_two_of_each_service() {
    let amqp = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let admin = std::env::var("PATCHBAY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pg = patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"));
    let ns = format!("pgpipe{}x{}", std::process::id(), patchbay_model::Uuid::now_v7().simple());
    let tmp = tempfile::tempdir().unwrap();
    let repo =
        patchbay_fixtures::origin(tmp.path(), &[("README", "base\n"), ("test.sh", "set -e\ngrep -q fixed README\necho TESTS PASSED\n")]);
    let test = format!("name = \"check\"\nscript = \"sh test.sh\"\narches = [\"{}\"]\ntime_limit_secs = 60\n", std::env::consts::ARCH);
    let hosts: Vec<std::path::PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|h| {
            let path = tmp.path().join(format!("{h}.toml"));
            write_config_with(&path, (&format!("data-{h}"), h), (&amqp, &ns, &pg), &repo.to_string_lossy(), &test);
            path
        })
        .collect();
    let (a, b) = (&hosts[0], &hosts[1]);

    // The test watches what the services say on the broker.
    let root = TopicRoot::new("e2e", &ns).unwrap();
    let mut config = AmqpConfig::new(amqp.clone(), tmp.path().join("watch-seq"));
    config.exchange = ns.clone();
    config.queue_expiry = Some(Duration::from_secs(600));
    let bus: Arc<dyn Bus> = Arc::new(AmqpBus::connect(config, Sealer::default()).await.expect("RabbitMQ"));
    let watch_on = async |name: &str, suffix: &str| {
        let pattern = TopicPattern::parse(root.topic(suffix).unwrap().as_str()).unwrap();
        bus.subscribe(QueueSpec::new(format!("{ns}.{name}"), vec![pattern]).prefetch(500)).await.unwrap()
    };
    let mut verdicts = watch_on("verdicts", "ci.series.verdict").await;
    let mut completes = watch_on("completes", "series.series.complete").await;
    let mut finished = watch_on("finished", "ci.test.finished").await;
    let mut sent = watch_on("sent", "report.email.sent").await;

    let (la, lb) = (free_port(), free_port());
    let ingest_a = Proc::start(a, tmp.path(), "ingest", &["--lmtp", &format!("127.0.0.1:{la}")]);
    let ingest_b = Proc::start(b, tmp.path(), "ingest", &["--lmtp", &format!("127.0.0.1:{lb}")]);
    let dispatch_a = Proc::start(a, tmp.path(), "dispatcher", &[]);
    let dispatch_b = Proc::start(b, tmp.path(), "dispatcher", &[]);
    let runner_a = Proc::start(a, tmp.path(), "runner", &[]);
    let runner_b = Proc::start(b, tmp.path(), "runner", &[]);
    let agg_a = Proc::start(a, tmp.path(), "aggregator", &[]);
    let agg_b = Proc::start(b, tmp.path(), "aggregator", &[]);
    let report_a = Proc::start(a, tmp.path(), "reporter", &[]);
    let report_b = Proc::start(b, tmp.path(), "reporter", &[]);
    let history = Proc::start(a, tmp.path(), "history", &[]);
    let web_port = free_port();
    let web = Proc::start(b, tmp.path(), "web", &["--http", &format!("127.0.0.1:{web_port}")]);
    let all = [&ingest_a, &ingest_b, &dispatch_a, &dispatch_b, &runner_a, &runner_b, &agg_a, &agg_b, &report_a, &report_b, &history, &web];
    for port in [la, lb] {
        common::wait_until("the LMTP listeners", 60, &all, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }
    wait_http(web_port, "/readyz", "run web", &all);
    for p in [&dispatch_a, &dispatch_b, &agg_a, &agg_b, &report_a, &report_b, &history] {
        wait_log(p, "Service started");
    }

    // Eight series, good and broken in turn, some of two patches.
    const N: usize = 8;
    let mut mails = Vec::new();
    for n in 0..N {
        let content = if n % 2 == 0 { "fixed\n" } else { "broken\n" };
        let mut changes = vec![("README", content)];
        if n % 3 == 0 {
            changes.push(("NOTES", "more\n"));
        }
        mails.extend(common::format_series(&repo, &format!("s{n}"), "main", &changes, "", None));
    }
    // Both hosts get every mail, in opposite orders, at once (two MX hosts).
    let (forward, backward) = (mails.clone(), mails.iter().rev().cloned().collect::<Vec<_>>());
    let one = std::thread::spawn(move || common::lmtp_deliver(la, "pg.lists.example.org", &forward));
    let two = std::thread::spawn(move || common::lmtp_deliver(lb, "pg.lists.example.org", &backward));
    one.join().unwrap();
    two.join().unwrap();

    let completed = collect(&mut completes, "series announced complete", &all, |b| b.len() >= N).await;
    let ids: HashSet<i64> = completed.iter().map(|b| b["series"]["id"].as_i64().unwrap()).collect();
    assert_eq!((completed.len(), ids.len()), (N, N), "each series announced complete once");
    let decided = collect(&mut verdicts, "verdicts", &all, |b| b.len() >= N).await;
    assert_eq!(decided.len(), N, "one verdict per series");
    let store = patchbay_store_pg::PgStore::connect(&pg, 2, Sealer::default()).await.unwrap();
    let client = store.client().await.unwrap();
    // What the store holds, for the messages below.
    let members: Vec<String> = client
        .query(
            "SELECT s.uid, s.name, s.state, sm.slot, m.subject, m.message_id FROM series s JOIN series_mails sm ON sm.series_id = s.id
             JOIN mails m ON m.id = sm.mail_id ORDER BY s.id, sm.slot",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {} {}",
                r.get::<_, i64>(0),
                r.get::<_, &str>(1),
                r.get::<_, &str>(2),
                r.get::<_, i64>(3),
                r.get::<_, &str>(4),
                r.get::<_, &str>(5)
            )
        })
        .collect();
    let members = members.join("\n");
    for v in &decided {
        let name = v["series"]["name"].as_str().unwrap();
        // "the s3 series" from its cover, or "s3: part 1" when it completed before its cover came.
        let n: usize = name.split(|c: char| !c.is_ascii_alphanumeric()).find_map(|w| w.strip_prefix('s')?.parse().ok()).expect(name);
        let want = if n.is_multiple_of(2) { "PASSED" } else { "FAILED" };
        let announced: Vec<String> = completed
            .iter()
            .map(|c| {
                format!(
                    "{} {} {:?}",
                    c["series"]["id"],
                    c["series"]["name"],
                    c["patches"].as_array().unwrap().iter().map(|p| p["message_id"].clone()).collect::<Vec<_>>()
                )
            })
            .collect();
        assert_eq!(v["verdict"], want, "{name}: {v}\n{members}\nannounced:\n{}\n{}", announced.join("\n"), ingest_a.stderr());
        assert!(ids.contains(&v["series"]["id"].as_i64().unwrap()), "the verdict names the announced id");
    }
    let results = collect(&mut finished, "results", &all, |b| b.len() >= 2 * N).await;
    let jobs: HashSet<&str> = results.iter().map(|r| r["job"].as_str().unwrap()).collect();
    assert_eq!((results.len(), jobs.len()), (2 * N, 2 * N), "apply and check, each run once per series");

    // One report mail per series, from whichever reporter took its verdict, threaded under the
    // series' first mail, each with its own Message-ID and the right verdict.
    let sent = collect(&mut sent, "reports sent", &all, |b| b.len() >= N).await;
    assert_eq!(sent.len(), N, "one report per series");
    let mut mails_out = Vec::new();
    for host in ["data-a", "data-b"] {
        let Ok(dir) = std::fs::read_dir(tmp.path().join(host).join("outbox/new")) else { continue };
        mails_out.extend(dir.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()));
    }
    assert_eq!(mails_out.len(), N, "one report mail per series over both hosts");
    let header = |m: &str, h: &str| m.lines().find_map(|l| l.strip_prefix(h)).unwrap_or_default().to_string();
    let ids: HashSet<String> = mails_out.iter().map(|m| header(m, "Message-ID: ")).collect();
    assert_eq!(ids.len(), N, "distinct Message-IDs");
    for m in &mails_out {
        assert!(!header(m, "In-Reply-To: ").is_empty(), "threaded: {m}");
        let subject = header(m, "Subject: ");
        let n: usize = subject.split(|c: char| !c.is_ascii_alphanumeric()).find_map(|w| w.strip_prefix('s')?.parse().ok()).expect(&subject);
        let want = if n.is_multiple_of(2) { "PASSED" } else { "FAILED" };
        assert_eq!(header(m, "X-Patchbay-Verdict: "), want, "{subject}");
    }

    // The web edge reads PostgreSQL: every series with its verdict, its page with the report,
    // and the history's messages.
    let listed = http_get(web_port, "/api/v1/series?per_page=50");
    let body = listed.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {listed}"));
    let items = json["series"].as_array().unwrap_or_else(|| panic!("{json}"));
    assert_eq!(items.len(), N, "{json}");
    assert!(items.iter().all(|i| i["verdict"] == "PASSED" || i["verdict"] == "FAILED"), "{json}");
    let id = items[0]["id"].as_i64().unwrap();
    let one = http_get(web_port, &format!("/api/v1/series/{id}"));
    assert!(one.starts_with("HTTP/1.1 200") && one.contains("\"state\":\"sent\""), "the series shows its report: {one}");
    let topic = root.topic("ci.series.verdict").unwrap();
    common::wait_until("the history through the web edge", 60, &all, || {
        let found = http_get(web_port, &format!("/api/v1/messages?topic={}&rows_per_page=50", topic.as_str()));
        found.matches("\"verdict\":").count() >= N
    });

    // A third host stores a reply with `inject`, into the same database.
    let reply = "From: Rev <rev@example.org>\nSubject: Re: the s0 series\nMessage-ID: <reply-1@example.org>\nIn-Reply-To: <x@y>\nList-Id: <pg.lists.example.org>\n\nLooks good.\n";
    let mut child = bin()
        .arg("--config")
        .arg(&hosts[2])
        .args(["inject", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), reply.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"stored\""), "{out:?}");

    let count = async |sql: &str| -> i64 { client.query_one(sql, &[]).await.unwrap().get(0) };
    assert_eq!(count("SELECT count(*) FROM mails").await, mails.len() as i64 + 1, "each mail stored once, the reply too");
    assert_eq!(count("SELECT count(*) FROM series").await, N as i64, "each series once");
    assert_eq!(count("SELECT count(*) FROM series WHERE state = 'complete'").await, N as i64);
    assert_eq!(count("SELECT count(*) FROM results").await, 2 * N as i64);
    assert_eq!(count("SELECT count(*) FROM verdicts WHERE verdict IS NOT NULL").await, N as i64);
    assert_eq!(count("SELECT count(*) FROM reports WHERE state = 'sent'").await, N as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_on_postgres_go_out_from_one_process_and_survive_its_kill_9() {
    let amqp = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let admin = std::env::var("PATCHBAY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pg = patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"));
    let py = std::env::var("PATCHBAY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ns = format!("pgntf{}x{}", std::process::id(), patchbay_model::Uuid::now_v7().simple());
    let tmp = tempfile::tempdir().unwrap();
    let (_receiver, log, hook_port) = start_receiver(&py, tmp.path(), 0);
    let hosts: Vec<std::path::PathBuf> = ["a", "b", "w"].iter().map(|h| tmp.path().join(format!("{h}.toml"))).collect();
    for (path, host) in hosts.iter().zip(["a", "b", "w"]) {
        write_config(path, &format!("data-{host}"), host, &amqp, &ns, &pg);
        let mut text = std::fs::read_to_string(path).unwrap();
        text.push_str("[http]\nadmin_tokens = { ops = \"0123456789abcdef-ops\" }\n");
        std::fs::write(path, text).unwrap();
    }
    let port = free_port();
    let web = Proc::start(&hosts[2], tmp.path(), "web", &["--http", &format!("127.0.0.1:{port}")]);
    wait_http(port, "/healthz", "run web", &[&web]);
    let notifiers = [Proc::start(&hosts[0], tmp.path(), "notify", &[]), Proc::start(&hosts[1], tmp.path(), "notify", &[])];
    // The rule, added where the admins are: in force in both notifying processes.
    let rule = serde_json::json!({"name": "hook", "webhook": format!("http://127.0.0.1:{hook_port}/ok"), "secret": "hook-secret-1234",
        "topics": ["demo.event.#"]});
    let (status, answer) = http_method(
        "POST",
        port,
        "/api/v1/notify/rules",
        "Authorization: Bearer 0123456789abcdef-ops\r\nContent-Type: application/json\r\n",
        &rule.to_string(),
    );
    assert_eq!(status, 201, "{answer}");
    for p in &notifiers {
        wait_log(p, "service=notify");
    }
    let root = TopicRoot::new("e2e", &ns).unwrap();
    let mut config = AmqpConfig::new(amqp.clone(), tmp.path().join("tester-seq"));
    config.exchange = ns.clone();
    let bus: Arc<dyn Bus> = Arc::new(AmqpBus::connect(config, Sealer::default()).await.expect("RabbitMQ"));
    let tester = Publisher::new(bus.clone(), root.clone(), Sender::new("tester", "t"));
    let mut ids = Vec::new();
    let mut publish = async |n: u32| {
        let out = tester.free_form(&format!("demo.event.n{n}"), serde_json::json!({"n": n})).unwrap();
        ids.push(bus.publish(vec![out]).await.unwrap()[0].id.to_string());
    };
    for n in 0..10 {
        publish(n).await;
    }
    let ok = || -> Vec<serde_json::Value> { received_hooks(&log).into_iter().filter(|r| r["status"] == 200).collect() };
    wait_until("the first deliveries", 60, &[&notifiers[0], &notifiers[1]], || ok().len() >= 3);
    // The one that delivers is the one not standing by; it dies mid-run.
    let standing = |p: &Proc| p.stderr().contains("another process delivers");
    let [a, b] = notifiers;
    let (leader, other) = if standing(&a) { (b, a) } else { (a, b) };
    assert!(standing(&other), "one delivers, the other stands by:\n{}\n{}", leader.stderr(), other.stderr());
    leader.kill9();
    for n in 10..20 {
        publish(n).await;
    }
    wait_until("every event delivered after the take-over", 90, &[&other], || {
        ok().iter().map(|r| r["body"]["id"].as_str().unwrap().to_string()).collect::<HashSet<_>>().len() >= 20
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered = ok();
    let got: HashSet<String> = delivered.iter().map(|r| r["body"]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, ids.iter().cloned().collect::<HashSet<_>>(), "every event");
    for r in &delivered {
        assert_eq!(r["delivery"], format!("hook:{}", r["body"]["id"].as_str().unwrap()), "a repeat has its delivery id: receivers drop it");
        assert_eq!(r["signed"], true);
    }
    assert!(delivered.len() <= 21, "at most the one under way when the leader died again: {}", delivered.len());
    drop(other);
    drop(web);
}
