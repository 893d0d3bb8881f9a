//! Issue 15: every service in a process of its own (`patchbay run <service>`) on RabbitMQ,
//! sharing the data directory's store: mail over LMTP to `run ingest`, jobs from `run
//! dispatcher`, tests by `run runner`, verdicts by `run aggregator`, reports by `run reporter`,
//! the store's messages carried to the broker by `run relay`, history by `run history`, the API
//! by `run web`. A process killed with SIGKILL and started again later loses nothing: its
//! durable queue kept what came meanwhile. Every process but the runner answers `/healthz`,
//! `/readyz` and `/metrics`.

use std::path::Path;
use std::time::Duration;

mod common;
use common::{Proc, bin, format_series, free_port, http_get, wait_http, wait_log, wait_until};
use patchbay_fixtures::origin;

const LIST: &str = "svc.lists.example.org";

/// The report mails in the outbox: (subject, verdict, Message-ID).
fn outbox(data: &Path) -> Vec<(String, String, String)> {
    let Ok(dir) = std::fs::read_dir(data.join("outbox/new")) else { return vec![] };
    let mut out: Vec<(String, String, String)> = dir
        .map(|e| {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let header = |h: &str| text.lines().find_map(|l| l.strip_prefix(h)).unwrap_or_default().to_string();
            (header("Subject: "), header("X-Patchbay-Verdict: "), header("Message-ID: "))
        })
        .collect();
    out.sort();
    out
}

/// How many messages on `topic` the history recorded.
fn recorded(db: &Path, topic: &str) -> usize {
    let Ok(conn) = rusqlite::Connection::open(db) else { return 0 };
    conn.query_row("SELECT count(*) FROM bus_messages WHERE topic = ?1", [topic], |r| r.get::<_, i64>(0)).map_or(0, |n| n as usize)
}

#[test]
fn every_service_runs_as_its_own_process_on_rabbitmq() {
    let url = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let ns =
        format!("svc{}x{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis());
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n"), ("test.sh", "set -e\ngrep -q fixed README\necho TESTS PASSED\n")]);
    let (http, lmtp) = (free_port(), free_port());
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[ingest]\nlmtp_listen = \"127.0.0.1:{lmtp}\"\n\
             [bus]\nbackend = \"amqp\"\nurl = \"{url}\"\nexchange = \"{ns}\"\nprefix = \"e2e\"\nenv = \"{ns}\"\n[identity]\ninstance = \"{ns}\"\n\
             [runner]\njobs = 2\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"check\"\nscript = \"sh test.sh\"\narches = [\"{}\"]\ntime_limit_secs = 60\n",
            repo.display(),
            std::env::consts::ARCH
        ),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let db = data.join("patchbay.sqlite3");
    let probe = free_port();

    // A service that cannot do anything says why and stops.
    let relay_on_embedded = tmp.path().join("embedded.toml");
    std::fs::write(&relay_on_embedded, "data_dir = \"data-embedded\"\n").unwrap();
    let out = bin().arg("--config").arg(&relay_on_embedded).args(["run", "relay"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bus.backend") && err.contains("relay"), "{err}");

    let history = Proc::start(&config, tmp.path(), "history", &[]);
    let relay = Proc::start(&config, tmp.path(), "relay", &[]);
    let ingest = Proc::start(&config, tmp.path(), "ingest", &[]);
    let dispatcher = Proc::start(&config, tmp.path(), "dispatcher", &[]);
    let runner = Proc::start(&config, tmp.path(), "runner", &[]);
    let reporter = Proc::start(&config, tmp.path(), "reporter", &[]);
    let logs = Proc::start(&config, tmp.path(), "logs", &[]);
    let web = Proc::start(&config, tmp.path(), "web", &[]);
    let aggregator = Proc::start(&config, tmp.path(), "aggregator", &["--http", &format!("127.0.0.1:{probe}")]);
    let all = [&history, &relay, &ingest, &dispatcher, &runner, &reporter, &logs, &web, &aggregator];
    wait_http(http, "/healthz", "run web", &all);
    wait_http(probe, "/healthz", "the aggregator's probes", &all);
    // The aggregator is killed (its queue stays, durable) and comes back only after the
    // results: it catches up from its queue.
    wait_until("the LMTP listener", 60, &all, || std::net::TcpStream::connect(("127.0.0.1", lmtp)).is_ok());
    // Each queue exists once its service says it started: from then on it keeps what comes.
    for (p, needle) in [
        (&history, "Service started. service=serve-log"),
        (&runner, "queue=ci-job.check"),
        (&reporter, "Service started. service=reporter"),
        (&logs, "Service started. service=log-recorder"),
        (&aggregator, "Service started. service=aggregator"),
    ] {
        wait_log(p, needle);
    }
    aggregator.kill9();

    // The dispatcher is killed (SIGKILL) and started again before any mail: nothing depends
    // on it but its queue.
    dispatcher.kill9();
    let dispatcher = Proc::start(&config, tmp.path(), "dispatcher", &[]);
    wait_log(&dispatcher, "Service started. service=dispatcher");

    let good = format_series(&repo, "good", "main", &[("README", "fixed\n")], "", None);
    let bad = format_series(&repo, "bad", "main", &[("README", "broken\n")], "", None);
    common::lmtp_deliver(lmtp, LIST, &good);
    common::lmtp_deliver(lmtp, LIST, &bad);

    let finished = format!("e2e.{ns}.ci.test.finished");
    let all = [&history, &relay, &ingest, &dispatcher, &runner, &reporter, &logs, &web];
    wait_until("four results (apply and check, two series)", 180, &all, || recorded(&db, &finished) >= 4);
    assert!(outbox(&data).is_empty(), "no verdict without an aggregator");

    let aggregator = Proc::start(&config, tmp.path(), "aggregator", &["--http", &format!("127.0.0.1:{probe}")]);
    let all = [&history, &relay, &ingest, &dispatcher, &runner, &reporter, &logs, &web, &aggregator];
    wait_until("two reports", 120, &all, || outbox(&data).len() >= 2);
    std::thread::sleep(Duration::from_secs(2));
    let reports = outbox(&data);
    assert_eq!(reports.len(), 2, "one report per series: {reports:#?}");
    assert!(reports[0].0.contains("the bad series") && reports[0].1 == "FAILED", "{reports:#?}");
    assert!(reports[1].0.contains("the good series") && reports[1].1 == "PASSED", "{reports:#?}");
    assert_ne!(reports[0].2, reports[1].2, "distinct Message-IDs");
    assert_eq!(recorded(&db, &format!("e2e.{ns}.ci.series.verdict")), 2);
    assert_eq!(recorded(&db, &finished), 4, "each (series, test) ran once");

    // The probes of a process that is not the web edge.
    wait_http(probe, "/healthz", "the aggregator's probes", &all);
    let ready = http_get(probe, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200") && ready.contains("\"bus\":\"ok\"") && ready.contains("\"store\":\"ok\""), "{ready}");
    let metrics = http_get(probe, "/metrics");
    assert!(metrics.contains("patchbay_messages_handled_total{service=\"aggregator\"}"), "{metrics}");
    assert!(http_get(probe, "/api/v1/series").starts_with("HTTP/1.1 404"), "the probes only");

    // The web edge reads the shared store: both series, under their public ids.
    let listed = http_get(http, "/api/v1/series");
    assert!(listed.contains("the good series") && listed.contains("the bad series"), "{listed}");
    let ids: Vec<u64> =
        listed.split("\"id\":").skip(1).filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).collect();
    assert!(ids.len() >= 2 && ids.iter().all(|&id| id >= 1 << 52), "{listed}");
    // Full test logs reached the store through `run logs`.
    let job = format!("{}-v1-check-{}", ids[0], std::env::consts::ARCH);
    wait_until("a test log", 30, &all, || http_get(http, &format!("/api/v1/logs/{job}")).starts_with("HTTP/1.1 200"));
}
