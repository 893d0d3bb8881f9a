//! What the history tests share: messages to keep, and queries as the HTTP API takes them.
#![allow(dead_code)]

use patchbay_bus::Outgoing;
use patchbay_history::Query;
use patchbay_model::{SchemaRef, Sender, Topic};

pub fn out(service: &str, instance: &str, topic: &str, body: serde_json::Value) -> Outgoing {
    Outgoing {
        sender: Sender::new(service, instance),
        topic: Topic::parse(topic).unwrap(),
        schema: SchemaRef { name: "patchbay.json".into(), version: 1 },
        body,
    }
}

pub fn q(pairs: &[(&str, &str)]) -> Query {
    let params: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    Query::from_params(&params, patchbay_model::Timestamp::now().as_micros()).unwrap()
}

/// The history test's messages: 60 results of two projects and two runners, 60 mails, a body
/// that spells a filter token, and a job whose text is beyond the text index's limit.
pub fn messages() -> Vec<Outgoing> {
    let mut batch = Vec::new();
    for i in 0..60i64 {
        let project = if i % 2 == 0 { "qemu" } else { "linux" };
        batch.push(out(
            "runner",
            if i % 3 == 0 { "r1" } else { "r2" },
            "pb.dev.ci.test.finished",
            serde_json::json!({"series": {"id": i % 10, "project": project}, "outcome": if i == 7 { "FAILED" } else { "PASSED" }, "excerpt": format!("log line {i}")}),
        ));
        batch.push(out("ingest", "main", "pb.dev.mail.message.received", serde_json::json!({"subject": format!("[PATCH] mail {i}")})));
    }
    batch.push(out("shell", "x", "pb.dev.other.thing.said", serde_json::json!({"project": "linux", "note": "line zzp71656d75"})));
    batch.push(out(
        "dispatcher",
        "main",
        "pb.dev.ci.job.build.x86_64.queued",
        serde_json::json!({"dependencies": ["x".repeat(40_000)], "job": "12-v1-build-x86_64"}),
    ));
    batch
}
