//! The wire format as a promise kept: the exported JSON Schemas must equal `golden/schemas.json`
//! (`PATCHBAY_BLESS=1 cargo test -p patchbay-model --test golden` rewrites it, which is a schema
//! change to review), and `golden/messages.jsonl`, envelopes recorded from the code before the
//! domain enums (issue 14), must read back into their body types and write back byte for byte,
//! every word they carry a known variant of those enums.
//! The recorded messages are never rewritten.

use std::path::{Path, PathBuf};

use patchbay_model::*;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

#[test]
fn exported_schemas_are_unchanged() {
    let bodies: Vec<_> = body_schemas().into_iter().map(|b| serde_json::to_value(b).unwrap()).collect();
    let now = serde_json::to_string_pretty(&serde_json::json!({ "bodies": bodies, "envelope": envelope_schema() })).unwrap() + "\n";
    let path = golden("schemas.json");
    if std::env::var_os("PATCHBAY_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (PATCHBAY_BLESS=1 writes it)", path.display()));
    let diff: Vec<String> = expected
        .lines()
        .zip(now.lines())
        .enumerate()
        .filter(|(_, (e, n))| e != n)
        .take(20)
        .map(|(i, (e, n))| format!("line {}:\n- {e}\n+ {n}", i + 1))
        .collect();
    assert!(
        expected == now,
        "the JSON Schemas changed (a wire format change; PATCHBAY_BLESS=1 rewrites {}):\n{}\n(golden {} lines, now {} lines)",
        path.display(),
        diff.join("\n"),
        expected.lines().count(),
        now.lines().count()
    );
}

/// Parses the envelope's body as `B` and writes it back: the same JSON, so the same signed bytes.
fn body_round_trips<B: Body>(env: &Envelope) -> B {
    assert_eq!((env.schema.name.as_str(), env.schema.version), (B::SCHEMA, B::VERSION));
    let body: B = serde_json::from_value(env.body.clone()).unwrap_or_else(|e| panic!("{} does not read back: {e}", B::SCHEMA));
    let again = serde_json::to_value(&body).unwrap();
    assert_eq!(again, env.body, "{} writes back differently", B::SCHEMA);
    let topic = env.topic.as_str().strip_prefix("patchbay.prod.").unwrap();
    assert_eq!(body.topic_suffix(), topic, "{} routes elsewhere", B::SCHEMA);
    let mut rebuilt = env.clone();
    rebuilt.body = again;
    assert_eq!(rebuilt.to_wire(), env.to_wire());
    body
}

/// Every word today's code writes is one the domain types name (only an ERROR's own words are `Other`).
fn known(word: Option<&'static str>, what: &str) {
    assert!(word.is_some(), "{what} reads back as an unknown word");
}

#[test]
fn recorded_messages_read_back_byte_for_byte() {
    let text = std::fs::read(golden("messages.jsonl")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let env = Envelope::from_wire(line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
        assert_eq!(env.to_wire(), line, "the envelope writes back differently");
        assert!(check_body(env.topic.as_str().strip_prefix("patchbay.prod.").unwrap(), &env.body).unwrap().is_ok());
        match env.schema.name.as_str() {
            LogMessage::SCHEMA => drop(body_round_trips::<LogMessage>(&env)),
            MailReceived::SCHEMA => known(body_round_trips::<MailReceived>(&env).kind.known(), "a mail kind"),
            SeriesNew::SCHEMA => drop(body_round_trips::<SeriesNew>(&env)),
            SeriesComplete::SCHEMA => drop(body_round_trips::<SeriesComplete>(&env)),
            SeriesIncomplete::SCHEMA => drop(body_round_trips::<SeriesIncomplete>(&env)),
            SeriesSuperseded::SCHEMA => drop(body_round_trips::<SeriesSuperseded>(&env)),
            SeriesMerged::SCHEMA => drop(body_round_trips::<SeriesMerged>(&env)),
            TestJob::SCHEMA => drop(body_round_trips::<TestJob>(&env)),
            TestStarted::SCHEMA => drop(body_round_trips::<TestStarted>(&env)),
            TestFinished::SCHEMA => {
                let b = body_round_trips::<TestFinished>(&env);
                known(b.outcome.known(), "an outcome");
                if b.outcome != Outcome::Error {
                    b.reason.iter().for_each(|r| known(r.known(), "a reason"));
                }
            }
            TestCancelled::SCHEMA => drop(body_round_trips::<TestCancelled>(&env)),
            RunnerHeartbeat::SCHEMA => drop(body_round_trips::<RunnerHeartbeat>(&env)),
            TestLog::SCHEMA => drop(body_round_trips::<TestLog>(&env)),
            ResultRecorded::SCHEMA => {
                let b = body_round_trips::<ResultRecorded>(&env);
                known(b.outcome.known(), "an outcome");
                b.previous.iter().for_each(|p| known(p.known(), "a previous outcome"));
                b.reason.iter().for_each(|r| known(r.known(), "a reason"));
            }
            ResultWaived::SCHEMA => drop(body_round_trips::<ResultWaived>(&env)),
            SeriesVerdict::SCHEMA => known(body_round_trips::<SeriesVerdict>(&env).verdict.known(), "a verdict"),
            ReportSent::SCHEMA => {
                let b = body_round_trips::<ReportSent>(&env);
                known(b.verdict.known(), "a verdict");
                known(b.transport.known(), "a transport");
            }
            ReportFailed::SCHEMA => known(body_round_trips::<ReportFailed>(&env).verdict.known(), "a verdict"),
            other => panic!("no body type for {other}"),
        }
        seen.insert(env.schema.name.clone());
    }
    let all: std::collections::BTreeSet<String> = body_schemas().iter().map(|b| b.name.to_string()).collect();
    assert_eq!(seen, all, "every body type has a recorded message");
}
