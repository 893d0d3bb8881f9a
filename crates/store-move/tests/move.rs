//! An embedded store moved into PostgreSQL answers as it did: the same series (public ids,
//! members, mbox, census) through the `SeriesStore` port, every bus message in the history,
//! results with their flags; new mail goes on from there (ids after the moved ones, a v2
//! superseding a moved v1); a move that would leave queued work undone, or into a database
//! that holds data, is refused. Needs a
//! PostgreSQL (`PATCHBAY_TEST_PG_URL`, which `scripts/test` sets); fails, never skips, without.

use patchbay_bus::Sealer;
use patchbay_ingest::{Ingest, Project, Rules, SeriesStore, Settings, incoming};
use patchbay_model::TopicRoot;
use patchbay_model::view::SeriesFilter;
use patchbay_store::EmbeddedBus;
use patchbay_store_pg::PgStore;

const LIST: &str = "move.lists.example.org";

fn settings() -> Settings {
    Settings { rules: Rules::default(), projects: vec![Project { name: "demo".into(), list_ids: vec![LIST.into()], tag: None }] }
}

fn mail(id: &str, subject: &str, reply_to: Option<&str>, body: &str) -> Vec<u8> {
    let threading = reply_to.map(|p| format!("In-Reply-To: {p}\nReferences: {p}\n")).unwrap_or_default();
    format!(
        "From: Dev <dev@example.org>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nSubject: {subject}\nMessage-ID: {id}\n{threading}List-Id: <{LIST}>\n\n{body}\n---\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+{body}\n"
    )
    .into_bytes()
}

async fn snapshot(store: &dyn SeriesStore) -> Vec<String> {
    let (rows, _) = store.list(SeriesFilter::default(), 1, 1000).await.unwrap();
    let mut out = Vec::new();
    for r in rows {
        out.push(format!(
            "{r:?} {:?} {:?} {:?}",
            store.patches(r.id).await.unwrap(),
            store.versions(r.id).await.unwrap(),
            store.mbox(r.id).await.unwrap()
        ));
    }
    out.push(format!("{:?}", store.census().await.unwrap()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_store_answers_as_before_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
    let root = TopicRoot::new("pbtest", "move").unwrap();
    // A queue nobody consumes keeps what it was given: work a move would leave undone.
    {
        use patchbay_bus::Bus as _;
        let pattern = patchbay_bus::TopicPattern::parse("pbtest.move.series.#").unwrap();
        drop(bus.subscribe(patchbay_bus::QueueSpec::new("dispatcher", vec![pattern])).await.unwrap());
    }
    let embedded = Ingest::new(bus.clone(), root.clone(), "t", settings());
    let mut mails = vec![mail("<c1@x>", "[PATCH 0/2] foo: work", None, "cover")];
    mails.push(mail("<p1@x>", "[PATCH 1/2] foo: one", Some("<c1@x>"), "one"));
    mails.push(mail("<p2@x>", "[PATCH 2/2] foo: two", Some("<c1@x>"), "two"));
    mails.push(mail("<q1@x>", "[PATCH] bar: fix", None, "bar"));
    mails.push(mail("<r1@x>", "Re: [PATCH] bar: fix", Some("<q1@x>"), "looks good"));
    for m in mails {
        embedded.accept(vec![incoming(m, vec![], 1_700_000_000)]).await.unwrap();
    }
    // A result, waived, to carry SQLite's integer flags into PostgreSQL's booleans.
    bus.db()
        .write(|tx| {
            tx.execute(
                "INSERT INTO results (message_id, job, series_id, version, project, test, arch, outcome, duration_ms, excerpt, recorded_at, duplicate, waived, waiver)
                 VALUES ('m1', 'j1', 1, 1, 'demo', 'build', 'x86_64', 'FAILED', 5, 'boom', 1, 0, 1, 'flaky')",
                [],
            )?;
            // A notification rule an admin added, and a message it keeps.
            tx.execute(
                "INSERT INTO notify_rules (name, rule, created_by, created_at) VALUES ('r', '{\"name\":\"r\",\"email\":\"a@x\"}', 'ops', 1)",
                [],
            )?;
            tx.execute("INSERT INTO notify_queue (rule, message_id, pos, sent_at, topic, wire) VALUES ('r', 'x', 7, 1, 't', x'00')", [])?;
            Ok(())
        })
        .await
        .unwrap();
    let before = snapshot(&bus.db().clone()).await;
    let messages = bus.db().read(|c| Ok(c.query_row("SELECT count(*) FROM bus_messages", [], |r| r.get::<_, i64>(0))?)).await.unwrap();
    drop(embedded);

    let admin = std::env::var("PATCHBAY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"));
    let pg = PgStore::connect(&url, 4, Sealer::default()).await.unwrap();
    let db = dir.path().join(patchbay_store::DB_FILE);
    let mut seen = Vec::new();
    // The embedded queues still hold the announcements no consumer took: refused unless dropped.
    let refused = patchbay_store_move::move_store(&db, &pg, false, |_, _| {}).await;
    assert!(matches!(&refused, Err(patchbay_store_move::MoveError::Pending(w)) if w.contains("dispatcher")), "{refused:?}");
    let moved = patchbay_store_move::move_store(&db, &pg, true, |t, n| seen.push((t.to_string(), n))).await.unwrap();
    assert_eq!(moved.messages as i64, messages);
    assert_eq!(seen.first().map(|(t, _)| t.as_str()), Some("history"), "the history first, then each table");
    assert!(moved.rows.iter().any(|(t, n)| t == "mails" && *n == 5), "{moved:?}");

    assert_eq!(snapshot(&pg).await, before, "the series read the same from PostgreSQL");
    let client = pg.client().await.unwrap();
    let kept: i64 = client.query_one("SELECT count(*) FROM history", &[]).await.unwrap().get(0);
    assert_eq!(kept, messages, "every message of the bus log in the history");
    let row = client.query_one("SELECT waived, duplicate, waiver FROM results", &[]).await.unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1), row.get::<_, String>(2)), (true, false, "flaky".to_string()));

    let by: String = client.query_one("SELECT created_by FROM notify_rules WHERE name = 'r'", &[]).await.unwrap().get(0);
    assert_eq!(by, "ops", "the admins' notification rules move");
    let pos: i64 = client
        .query_one(
            "INSERT INTO notify_queue (rule, message_id, sent_at, topic, wire) VALUES ('r', 'y', 2, 't', '\\x00') RETURNING pos",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pos > 7, "what a rule keeps next comes after what it kept: {pos}");

    // New mail goes on from the moved state: the next id, and a v2 that replaces the moved v1.
    let on_pg = Ingest::on_postgres(pg.clone(), root, "t", settings());
    let v2 = vec![
        mail("<c2@x>", "[PATCH v2 0/2] foo: work", Some("<c1@x>"), "cover"),
        mail("<p21@x>", "[PATCH v2 1/2] foo: one", Some("<c2@x>"), "one2"),
        mail("<p22@x>", "[PATCH v2 2/2] foo: two", Some("<c2@x>"), "two2"),
    ];
    let mut outcomes = Vec::new();
    for m in v2 {
        outcomes.extend(on_pg.accept(vec![incoming(m, vec![], 1_700_000_100)]).await.unwrap());
    }
    assert!(matches!(outcomes[0], patchbay_ingest::Outcome::Stored { mail: 6, .. }), "{outcomes:?}");
    let states: Vec<(i64, String)> = client
        .query("SELECT version, state FROM series WHERE name LIKE 'foo%' ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(states, vec![(1, "superseded".to_string()), (2, "complete".to_string())]);

    // Once only.
    let again = patchbay_store_move::move_store(&db, &pg, true, |_, _| {}).await;
    assert!(matches!(again, Err(patchbay_store_move::MoveError::NotEmpty(_))), "{again:?}");
}
