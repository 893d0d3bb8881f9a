//! Results recorded once each, repeats marked, and one verdict per series version under
//! redelivery and with two aggregators on one store: the store conformance suite of the
//! aggregator. Every scenario runs unchanged on the embedded SQLite store and on PostgreSQL
//! (`PATCHBAY_TEST_PG_URL`, which `scripts/test` sets to a throwaway cluster; the PostgreSQL
//! cases fail, never skip, when there is none).

use std::sync::Arc;

use patchbay_bus::{Bus, MessageLog, Publisher, Sealer};
use patchbay_model::{BaseUsed, Envelope, Sender, SeriesHead, TestFinished, TopicRoot};
use patchbay_results::{Aggregator, Policy, Query, ResultsStore};
use patchbay_store::EmbeddedBus;
use patchbay_store_pg::PgStore;
use patchbay_verdict::Required;

/// One store under test, by backend.
#[derive(Clone)]
enum Store {
    Sqlite(EmbeddedBus, Arc<tempfile::TempDir>),
    /// The store, its URL, and a scratch embedded bus for the publisher, which only shapes
    /// messages here (the store's transaction publishes them): any bus will do.
    Pg(PgStore, String, EmbeddedBus, Arc<tempfile::TempDir>),
}

async fn sqlite() -> Store {
    let dir = tempfile::tempdir().unwrap();
    Store::Sqlite(EmbeddedBus::open(dir.path(), Sealer::default()).unwrap(), Arc::new(dir))
}

async fn postgres() -> Store {
    let admin = std::env::var("PATCHBAY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"));
    let scratch = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(scratch.path(), Sealer::default()).unwrap();
    Store::Pg(PgStore::connect(&url, 8, Sealer::default()).await.unwrap(), url, bus, Arc::new(scratch))
}

impl Store {
    /// A second handle on the same store, as a second aggregator process would have.
    async fn again(&self) -> Store {
        match self {
            Store::Sqlite(_, dir) => Store::Sqlite(EmbeddedBus::open(dir.path(), Sealer::default()).unwrap(), dir.clone()),
            Store::Pg(_, url, bus, scratch) => {
                Store::Pg(PgStore::connect(url, 8, Sealer::default()).await.unwrap(), url.clone(), bus.clone(), scratch.clone())
            }
        }
    }

    fn port(&self) -> Arc<dyn ResultsStore> {
        match self {
            Store::Sqlite(bus, _) => Arc::new(bus.db().clone()),
            Store::Pg(store, ..) => Arc::new(store.clone()),
        }
    }

    /// Everything the store has published (SQLite: its bus; PostgreSQL: its outbox), in order.
    async fn published(&self) -> Vec<Envelope> {
        match self {
            Store::Sqlite(bus, _) => {
                bus.read_after(0, 10_000).await.unwrap().iter().map(|e| Envelope::from_wire(&e.wire).unwrap()).collect()
            }
            Store::Pg(store, ..) => {
                let rows = store.client().await.unwrap().query("SELECT wire FROM outbox ORDER BY pos", &[]).await.unwrap();
                rows.iter().map(|r| Envelope::from_wire(r.get(0)).unwrap()).collect()
            }
        }
    }
}

fn aggregator_with(store: &Store, instance: &str, policy: Policy) -> Aggregator {
    let publisher = |bus: Arc<dyn Bus>| Publisher::new(bus, TopicRoot::new("pbtest", "agg").unwrap(), Sender::new("aggregator", instance));
    match store {
        Store::Sqlite(bus, _) => Aggregator::new(bus.clone(), publisher(Arc::new(bus.clone())), policy),
        Store::Pg(pg, _, bus, _) => Aggregator::on_postgres(pg.clone(), publisher(Arc::new(bus.clone())), policy),
    }
}

fn aggregator(store: &Store, instance: &str) -> Aggregator {
    let mut policy = Policy::default();
    policy.required.insert("demo".into(), vec![Required { test: "build".into(), arch: "x86_64".into() }]);
    aggregator_with(store, instance, policy)
}

/// Each scenario, once per backend.
macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario(super::sqlite().await).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario(super::postgres().await).await })*
        }
    };
}

on_both!(
    redeliveries_repeats_and_one_verdict,
    the_deadline_gives_incomplete_once,
    two_aggregators_on_one_store_decide_once,
    a_waived_failure_does_not_fail_the_verdict,
    a_superseded_version_is_closed_once,
    the_read_port_answers_alike,
    re_runs_and_pre_existing_failures_are_marked_and_counted,
    a_re_test_round_has_its_own_verdict,
);

fn result(series: i64, test: &str, arch: &str, outcome: &str) -> TestFinished {
    TestFinished {
        job: format!("{series}-v1-{test}-{arch}"),
        series: SeriesHead { id: series, project: "demo".into(), name: "s".into(), submitter: "a@x".into(), version: 1, total: 1 },
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

async fn bodies(store: &Store, topic: &str) -> Vec<serde_json::Value> {
    let topic = format!("pbtest.agg.{topic}");
    store.published().await.into_iter().filter(|e| e.topic.as_str() == topic).map(|e| e.body).collect()
}

async fn redeliveries_repeats_and_one_verdict(bus: Store) {
    let agg = aggregator(&bus, "1");
    agg.record("m1".into(), result(1, "apply", "any", "PASSED")).await.unwrap();
    agg.record("m1".into(), result(1, "apply", "any", "PASSED")).await.unwrap();
    assert_eq!(bodies(&bus, "ci.result.recorded").await.len(), 1, "a redelivered message is recorded once");
    assert!(bodies(&bus, "ci.series.verdict").await.is_empty(), "build is still missing");
    // An optional test does not decide anything.
    agg.record("m2".into(), result(1, "lint", "x86_64", "FAILED")).await.unwrap();
    assert!(bodies(&bus, "ci.series.verdict").await.is_empty());
    agg.record("m3".into(), result(1, "build", "x86_64", "FAILED")).await.unwrap();
    let verdicts = bodies(&bus, "ci.series.verdict").await;
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0]["verdict"], "FAILED");
    assert_eq!(verdicts[0]["failed"], serde_json::json!(["build/x86_64"]));
    // A rerun: recorded, flagged as a repeat, and no second verdict.
    agg.record("m4".into(), result(1, "build", "x86_64", "FAILED")).await.unwrap();
    agg.record("m5".into(), result(1, "build", "x86_64", "PASSED")).await.unwrap();
    let recorded = bodies(&bus, "ci.result.recorded").await;
    assert_eq!(recorded.len(), 5);
    assert_eq!(recorded[3]["duplicate"], true);
    assert_eq!(recorded[4]["duplicate"], false);
    assert_eq!(recorded[4]["previous"], "FAILED", "the flake shows");
    assert_eq!(bodies(&bus, "ci.series.verdict").await.len(), 1, "one verdict per series version");
}

async fn the_deadline_gives_incomplete_once(bus: Store) {
    let agg = aggregator(&bus, "1");
    agg.record("m1".into(), result(7, "apply", "any", "PASSED")).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(agg.sweep(now, 3600).await.unwrap(), 0, "not yet");
    assert_eq!(agg.sweep(now + 7200, 3600).await.unwrap(), 1);
    assert_eq!(agg.sweep(now + 9000, 3600).await.unwrap(), 0, "once");
    let v = bodies(&bus, "ci.series.verdict").await;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["verdict"], "INCOMPLETE");
    assert_eq!(v[0]["missing"], serde_json::json!(["build/x86_64"]));
    // A late result after the verdict is recorded, but decides nothing again.
    agg.record("m2".into(), result(7, "build", "x86_64", "PASSED")).await.unwrap();
    assert_eq!(bodies(&bus, "ci.series.verdict").await.len(), 1);
}

async fn two_aggregators_on_one_store_decide_once(a: Store) {
    // Two store handles (two writer threads, two pools), as two aggregator processes would have.
    let b = a.again().await;
    let (agg_a, agg_b) = (aggregator(&a, "a"), aggregator(&b, "b"));
    let mut tasks = Vec::new();
    for series in 0..40i64 {
        for (n, (test, arch)) in [("apply", "any"), ("build", "x86_64")].into_iter().enumerate() {
            // Every message reaches both aggregators (a redelivery to the other instance).
            for agg in [agg_a.clone(), agg_b.clone()] {
                let id = format!("s{series}-{n}");
                let r = result(series, test, arch, "PASSED");
                tasks.push(tokio::spawn(async move { agg.record(id, r).await.unwrap() }));
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let verdicts = bodies(&a, "ci.series.verdict").await;
    assert_eq!(verdicts.len(), 40, "exactly one verdict per series version");
    let mut ids: Vec<i64> = verdicts.iter().map(|v| v["series"]["id"].as_i64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert_eq!(bodies(&a, "ci.result.recorded").await.len(), 80, "each result once");
}

async fn a_waived_failure_does_not_fail_the_verdict(bus: Store) {
    let mut policy = Policy::default();
    policy.required.insert(
        "demo".into(),
        vec![Required { test: "build".into(), arch: "x86_64".into() }, Required { test: "build".into(), arch: "aarch64".into() }],
    );
    let agg = aggregator_with(&bus, "1", policy);
    agg.record("m1".into(), result(3, "apply", "any", "PASSED")).await.unwrap();
    agg.record("m2".into(), result(3, "build", "x86_64", "FAILED")).await.unwrap();
    assert!(bodies(&bus, "ci.series.verdict").await.is_empty(), "aarch64 still missing");
    let id = bodies(&bus, "ci.result.recorded").await[1]["result"].as_i64().unwrap();
    let w = agg.waive(id, "known flaky on this builder".into(), "maintainer".into()).await.unwrap().unwrap();
    assert_eq!((w.test.as_str(), w.arch.as_str()), ("build", "x86_64"));
    assert_eq!(bodies(&bus, "ci.result.waived").await[0]["comment"], "known flaky on this builder");
    agg.record("m3".into(), result(3, "build", "aarch64", "PASSED")).await.unwrap();
    let v = bodies(&bus, "ci.series.verdict").await;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["verdict"], "PASSED", "the waived failure does not count");
    assert!(agg.waive(9999, "x".into(), "m".into()).await.unwrap().is_none());
}

async fn a_superseded_version_is_closed_once(bus: Store) {
    let agg = aggregator(&bus, "1");
    agg.record("m1".into(), result(11, "apply", "any", "PASSED")).await.unwrap();
    let head = result(11, "apply", "any", "PASSED").series;
    assert!(agg.close(head.clone()).await.unwrap(), "decided at once from what it has");
    assert!(!agg.close(head).await.unwrap(), "and only once");
    let v = bodies(&bus, "ci.series.verdict").await;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["verdict"], "INCOMPLETE");
    // A version with no result at all, of a project nobody tests, is left alone.
    let mut other = result(12, "apply", "any", "PASSED").series;
    other.project = "untested".into();
    assert!(!agg.close(other).await.unwrap());
    // A late result on the closed version is recorded and decides nothing.
    agg.record("m2".into(), result(11, "build", "x86_64", "PASSED")).await.unwrap();
    assert_eq!(bodies(&bus, "ci.series.verdict").await.len(), 1);
}

async fn the_read_port_answers_alike(bus: Store) {
    let agg = aggregator(&bus, "1");
    // A test's output may hold a NUL, which PostgreSQL's TEXT cannot: recorded all the same.
    let mut applied = result(21, "apply", "any", "PASSED");
    applied.excerpt = "Applying: foo\0bar\n".into();
    agg.record("m1".into(), applied).await.unwrap();
    agg.record("m2".into(), result(21, "build", "x86_64", "FAILED")).await.unwrap();
    agg.record("m3".into(), result(21, "build", "x86_64", "FAILED")).await.unwrap();
    agg.record("m4".into(), result(22, "apply", "any", "PASSED")).await.unwrap();
    let port = bus.port();
    let verdicts = port.verdicts(vec![(22, 1), (21, 1), (21, 2)]).await.unwrap();
    assert_eq!(
        verdicts.iter().map(|v| v.as_ref().map(|v| v.as_str().to_string())).collect::<Vec<_>>(),
        vec![None, Some("FAILED".to_string()), None]
    );
    assert_eq!(port.verdict_detail(21, 1).await.unwrap().as_deref(), Some("build/x86_64"));
    assert_eq!(port.verdict_detail(99, 1).await.unwrap(), None);
    let cells = port.cells(21, 1).await.unwrap();
    assert_eq!(
        cells.iter().map(|c| (c.test.as_str(), c.outcome.as_str(), c.result_id)).collect::<Vec<_>>(),
        vec![("apply", "PASSED", 1), ("build", "FAILED", 3)]
    );
    let all = |q: &str| {
        let params: Vec<(String, String)> =
            q.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap()).map(|(k, v)| (k.into(), v.into())).collect();
        Query::from_params(&params).unwrap()
    };
    let rows = port.query(all("")).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![4, 3, 2, 1], "newest first");
    assert_eq!((rows[1].series, rows[1].version, rows[1].duplicate, rows[1].base.as_deref()), (21, 1, true, Some("abc (branch main)")));
    let latest = port.query(all("series=21&latest=true")).await.unwrap();
    assert_eq!(latest.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3, 1]);
    let failed = port.query(all("test=build&outcome=FAILED&before=3&limit=5")).await.unwrap();
    assert_eq!(failed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
}

async fn re_runs_and_pre_existing_failures_are_marked_and_counted(bus: Store) {
    let agg = aggregator(&bus, "1");
    // Series 31: a failure run again, then a pass on the re-run.
    agg.record("a1".into(), result(31, "apply", "any", "PASSED")).await.unwrap();
    agg.record("a2".into(), TestFinished { retrying: true, ..result(31, "build", "x86_64", "FAILED") }).await.unwrap();
    assert!(bodies(&bus, "ci.series.verdict").await.is_empty(), "the verdict waits for the re-run");
    agg.record("a3".into(), result(31, "build", "x86_64", "PASSED")).await.unwrap();
    // Series 32: a failure the base shows too.
    agg.record("b1".into(), result(32, "apply", "any", "PASSED")).await.unwrap();
    agg.record("b2".into(), TestFinished { pre_existing: true, ..result(32, "build", "x86_64", "FAILED") }).await.unwrap();
    let verdicts = bodies(&bus, "ci.series.verdict").await;
    assert_eq!(verdicts.len(), 2, "{verdicts:#?}");
    assert_eq!((&verdicts[0]["verdict"], &verdicts[0]["flaky"]), (&serde_json::json!("PASSED"), &serde_json::json!(["build/x86_64"])));
    assert_eq!(
        (&verdicts[1]["verdict"], &verdicts[1]["pre_existing"]),
        (&serde_json::json!("PASSED"), &serde_json::json!(["build/x86_64"]))
    );
    let recorded = bodies(&bus, "ci.result.recorded").await;
    let marks: Vec<(bool, bool, bool)> = recorded
        .iter()
        .filter(|r| r["test"] == "build")
        .map(|r| (r.get("retrying").is_some(), r.get("flaky").is_some(), r.get("pre_existing").is_some()))
        .collect();
    assert_eq!(marks, vec![(true, false, false), (false, true, false), (false, false, true)]);
    let stats = bus.port().test_stats().await.unwrap();
    let build = stats.iter().find(|s| s.test == "build").unwrap();
    assert_eq!((build.runs, build.failed, build.flaky, build.pre_existing), (2, 1, 1, 1), "{stats:#?}");
    assert_eq!(build.flake_rate(), 50.0);
    let apply = stats.iter().find(|s| s.test == "apply").unwrap();
    assert_eq!((apply.runs, apply.failed, apply.flaky), (2, 0, 0));
}

async fn a_re_test_round_has_its_own_verdict(bus: Store) {
    let mut policy = Policy::default();
    let required = |t: &str| Required { test: t.into(), arch: "x86_64".into() };
    policy.required.insert("demo".into(), vec![required("build"), required("lint")]);
    let agg = aggregator_with(&bus, "1", policy);
    agg.record("r1".into(), result(41, "apply", "any", "PASSED")).await.unwrap();
    agg.record("r2".into(), result(41, "build", "x86_64", "FAILED")).await.unwrap();
    agg.record("r3".into(), result(41, "lint", "x86_64", "PASSED")).await.unwrap();
    // Round 1 re-runs build and lint; the verdict waits for both.
    let labels = vec!["build/x86_64".to_string(), "lint/x86_64".to_string()];
    let again = |test: &str, outcome: &str| TestFinished { round: 1, recheck: labels.clone(), ..result(41, test, "x86_64", outcome) };
    agg.record("r4".into(), again("build", "PASSED")).await.unwrap();
    assert_eq!(bodies(&bus, "ci.series.verdict").await.len(), 1, "round 1 waits for lint");
    agg.record("r5".into(), again("lint", "PASSED")).await.unwrap();
    agg.record("r5".into(), again("lint", "PASSED")).await.unwrap();
    let verdicts = bodies(&bus, "ci.series.verdict").await;
    assert_eq!(verdicts.len(), 2, "{verdicts:#?}");
    assert_eq!((&verdicts[0]["verdict"], verdicts[0].get("round")), (&serde_json::json!("FAILED"), None));
    assert_eq!(
        (&verdicts[1]["verdict"], &verdicts[1]["round"], &verdicts[1]["recheck"]),
        (&serde_json::json!("PASSED"), &serde_json::json!(1), &serde_json::json!(labels))
    );
    let port = bus.port();
    assert_eq!(
        port.verdicts(vec![(41, 1)]).await.unwrap()[0].as_ref().map(|v| v.as_str().to_string()),
        Some("PASSED".into()),
        "the newest round"
    );
}
