//! Results recorded once each, repeats marked, and one verdict per series
//! version under redelivery and with two aggregators on one store.

use std::sync::Arc;

use patchbay_bus::{Bus, MessageLog, Publisher, Sealer};
use patchbay_model::{BaseUsed, Sender, SeriesHead, TestFinished, TopicRoot};
use patchbay_results::{Aggregator, Policy};
use patchbay_store::EmbeddedBus;
use patchbay_verdict::Required;

fn aggregator(bus: &EmbeddedBus, instance: &str) -> Aggregator {
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
    let publisher = Publisher::new(dyn_bus, TopicRoot::new("pbtest", "agg").unwrap(), Sender::new("aggregator", instance));
    let mut policy = Policy::default();
    policy.required.insert("demo".into(), vec![Required { test: "build".into(), arch: "x86_64".into() }]);
    Aggregator::new(bus.clone(), publisher, policy)
}

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
    }
}

async fn bodies(bus: &EmbeddedBus, topic: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in bus.read_after(0, 10_000).await.unwrap() {
        if e.topic == format!("pbtest.agg.{topic}") {
            out.push(patchbay_model::Envelope::from_wire(&e.wire).unwrap().body);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_repeats_and_one_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_gives_incomplete_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aggregators_on_one_store_decide_once() {
    let dir = tempfile::tempdir().unwrap();
    // Two store handles (two writer threads), as two aggregator processes would have.
    let a = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
    let b = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waived_failure_does_not_fail_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
    let publisher = Publisher::new(dyn_bus, TopicRoot::new("pbtest", "agg").unwrap(), Sender::new("aggregator", "1"));
    let mut policy = Policy::default();
    policy.required.insert(
        "demo".into(),
        vec![Required { test: "build".into(), arch: "x86_64".into() }, Required { test: "build".into(), arch: "aarch64".into() }],
    );
    let agg = Aggregator::new(bus.clone(), publisher, policy);
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
