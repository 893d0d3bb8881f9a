//! Ingest on PostgreSQL answers as ingest on SQLite: the same mails, in the same order, into a
//! scratch SQLite store and a scratch PostgreSQL database give the same series (public ids,
//! members, states, re-roll links, mbox, age, census) through the `SeriesStore` port, and the
//! same announcements (the embedded log against the outbox), body for body. The placement
//! rules are one text for both stores (`sql.rs`), so this checks what can still differ: the
//! dialect, types, NULs, ordering, and the writer. SQLite's answers are the ones the shape and
//! corpus tests hold right. Needs a PostgreSQL (`PATCHBAY_TEST_PG_URL`, which `scripts/test`
//! sets to a throwaway cluster): fails, never skips, without one.

mod common;

use patchbay_bus::Sealer;
use patchbay_ingest::{Incoming, Ingest, Project, Rules, SeriesStore, Settings, incoming};
use patchbay_model::TopicRoot;
use patchbay_model::view::SeriesFilter;
use patchbay_store::EmbeddedBus;
use patchbay_store_pg::PgStore;

const LIST: &str = "dev.lists.example.org";
const T: i64 = 1_700_000_000;

fn settings() -> Settings {
    let projects = vec![Project { name: "test".into(), list_ids: vec![LIST.into(), "linux-hwmon.vger.kernel.org".into()], tag: None }];
    Settings { rules: Rules::default(), projects }
}

fn root() -> TopicRoot {
    TopicRoot::new("pbtest", "ingest").unwrap()
}

/// A SQLite store and a PostgreSQL one (in a new scratch database), fed alike.
struct Pair {
    sqlite: Ingest,
    postgres: Ingest,
    pg: PgStore,
    _dir: tempfile::TempDir,
}

async fn pair() -> Pair {
    let admin = std::env::var("PATCHBAY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"));
    let pg = PgStore::connect(&url, 4, Sealer::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Ingest::new(EmbeddedBus::open(dir.path(), Sealer::default()).unwrap(), root(), "t", settings());
    let postgres = Ingest::on_postgres(pg.clone(), root(), "t", settings());
    Pair { sqlite, postgres, pg, _dir: dir }
}

impl Pair {
    /// Delivers `batches` to both stores, one transaction per batch, in order.
    async fn deliver(&self, batches: Vec<Vec<(Vec<u8>, i64)>>) {
        let parse =
            |batch: &[(Vec<u8>, i64)]| -> Vec<Incoming> { batch.iter().map(|(raw, at)| incoming(raw.clone(), vec![], *at)).collect() };
        for batch in &batches {
            let (a, b) = (self.sqlite.accept(parse(batch)).await.unwrap(), self.postgres.accept(parse(batch)).await.unwrap());
            assert_eq!(a, b, "the same outcome per mail");
        }
    }

    /// Both stores' answers, side by side, failing on the first difference.
    async fn assert_same(&self, what: &str) -> usize {
        let (a, b) = (snapshot(&*self.sqlite.series_store()).await, snapshot(&*self.postgres.series_store()).await);
        assert!(!a.is_empty());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "{what}: line {i} of the series snapshot differs");
        }
        assert_eq!(a.len(), b.len(), "{what}: as many series lines");
        let (ea, eb) = (common::events(&self.sqlite).await, outbox(&self.pg).await);
        for (i, (x, y)) in ea.iter().zip(&eb).enumerate() {
            assert_eq!(x, y, "{what}: message {i} differs");
        }
        assert_eq!(ea.len(), eb.len(), "{what}: as many messages");
        // The deadline sweep by mail dates, as `import` ends, on both.
        let (sa, sb) =
            (self.sqlite.sweep_by_mail_dates(T, 3 * 86400).await.unwrap(), self.postgres.sweep_by_mail_dates(T, 3 * 86400).await.unwrap());
        assert_eq!(sa, sb, "{what}: the sweep marks as many series incomplete");
        assert_eq!(snapshot(&*self.sqlite.series_store()).await, snapshot(&*self.postgres.series_store()).await, "{what}: after the sweep");
        a.len()
    }
}

/// Every series as the port shows it, one line each for the row, patches, versions, mbox and
/// age, and the census.
async fn snapshot(store: &dyn SeriesStore) -> Vec<String> {
    use sha2::Digest;
    let (rows, total) = store.list(SeriesFilter::default(), 1, 100_000).await.unwrap();
    let mut out = vec![format!("{total} series")];
    for row in rows {
        let id = row.id;
        out.push(format!("{row:?}"));
        out.push(format!("  patches {:?}", store.patches(id).await.unwrap()));
        out.push(format!("  versions {:?}", store.versions(id).await.unwrap()));
        let mbox = store.mbox(id).await.unwrap().map(|m| format!("{:x}", sha2::Sha256::digest(&m)));
        out.push(format!("  mbox {mbox:?} age {:?}", store.age(id).await.unwrap()));
    }
    let (states, consistency) = store.census().await.unwrap();
    out.push(format!("census {states:?} {consistency:?}"));
    // The filters the dashboard and the API use.
    let filter = SeriesFilter { search: Some("FOO".into()), state: Some("complete".into()), ..Default::default() };
    out.push(format!("search {:?}", store.list(filter, 1, 5).await.unwrap()));
    let filter = SeriesFilter { submitter: Some("DEV@example.org".into()), version: Some(2), ..Default::default() };
    out.push(format!("submitter {:?}", store.list(filter, 2, 1).await.unwrap()));
    out
}

/// Every message in the PostgreSQL outbox as (topic suffix, body), in commit order.
async fn outbox(pg: &PgStore) -> Vec<(String, serde_json::Value)> {
    let client = pg.client().await.unwrap();
    let rows = client.query("SELECT wire FROM outbox ORDER BY pos", &[]).await.unwrap();
    rows.iter()
        .map(|r| {
            let env = patchbay_model::Envelope::from_wire(r.get::<_, &[u8]>(0)).unwrap();
            (env.topic.as_str().trim_start_matches("pbtest.ingest.").to_string(), env.body)
        })
        .collect()
}

/// One mail from `from`, dated `day` days and `minute` minutes after the start, threading to
/// `reply_to` (nearest last).
fn mail(from: &str, day: u32, minute: u32, id: &str, subject: &str, reply_to: &[&str], body: &str) -> Vec<u8> {
    let threading = match reply_to.last() {
        Some(parent) => format!("In-Reply-To: {parent}\nReferences: {}\n", reply_to.join(" ")),
        None => String::new(),
    };
    format!(
        "From: Dev <{from}>\nDate: Mon, {} Jan 2024 10:{minute:02}:00 +0000\nSubject: {subject}\nMessage-ID: {id}\n{threading}List-Id: Dev <{LIST}>\n\n{body}",
        1 + day
    )
    .into_bytes()
}

fn patch_body(file: &str) -> String {
    format!(
        "Change {file}.\n\nSigned-off-by: Dev <dev@example.org>\n---\ndiff --git a/{file} b/{file}\n--- a/{file}\n+++ b/{file}\n@@ -1 +1 @@\n-a\n+b\n-- \n2.43.0\n"
    )
}

/// Mails of many shapes at once: re-rolls posted out of order, a partial re-roll, an unthreaded
/// posting placed by markers, a RESEND, a `Supersedes:` link, a duplicate, a conflicting
/// Message-ID, a stray `3/2`, a reply, a NUL in a header, and an unclaimed list.
fn shapes() -> Vec<Vec<u8>> {
    let d = "dev@example.org";
    let mut m = Vec::new();
    // foo: v1, v2 (first patch renamed), v3 (second renamed), each a cover and two patches.
    for (v, day, titles) in
        [(1, 0, ["foo: one", "foo: two"]), (2, 1, ["foo: one, better", "foo: two"]), (3, 2, ["foo: one, better", "foo: two, better"])]
    {
        let ver = if v > 1 { format!(" v{v}") } else { String::new() };
        let cover = format!("<foo{v}-0@x>");
        m.push(mail(d, day, 0, &cover, &format!("[PATCH{ver} 0/2] foo: work"), &[], "Cover.\n"));
        for (i, t) in titles.iter().enumerate() {
            let id = format!("<foo{v}-{}@x>", i + 1);
            m.push(mail(
                d,
                day,
                1 + i as u32,
                &id,
                &format!("[PATCH{ver} {}/2] {t}", i + 1),
                &[&cover],
                &patch_body(&format!("foo{v}{i}")),
            ));
        }
    }
    // bar: v1 of two patches, then a v2 of patch 2 only, in reply to v1's 2/2.
    m.push(mail(d, 3, 0, "<bar1@x>", "[PATCH 1/2] bar: one", &[], &patch_body("bar1")));
    m.push(mail(d, 3, 1, "<bar2@x>", "[PATCH 2/2] bar: two", &["<bar1@x>"], &patch_body("bar2")));
    m.push(mail(d, 4, 0, "<bar2v2@x>", "[PATCH v2 2/2] bar: two", &["<bar1@x>", "<bar2@x>"], &patch_body("bar2b")));
    // baz: three unthreaded patches and a cover nothing cites (markers place them).
    for i in 1..=3 {
        m.push(mail(
            "u@example.org",
            5,
            i,
            &format!("<baz{i}@x>"),
            &format!("[PATCH {i}/3] baz: part {i}"),
            &[],
            &patch_body(&format!("baz{i}")),
        ));
    }
    m.push(mail("u@example.org", 5, 4, "<baz0@x>", "[PATCH 0/3] baz: parts", &[], "Cover.\n"));
    // qux: posted, then RESENT in reply to itself; then a v2 saying what it supersedes.
    m.push(mail(d, 6, 0, "<qux@x>", "[PATCH] qux: fix", &[], &patch_body("qux")));
    m.push(mail(d, 6, 5, "<quxr@x>", "[RESEND PATCH] qux: fix", &["<qux@x>"], &patch_body("qux")));
    m.push(mail(d, 7, 0, "<qux2@x>", "[PATCH v2] qux: fix it right", &[], &format!("Supersedes: <qux@x>\n\n{}", patch_body("qux2"))));
    // A review reply, a duplicate delivery, a conflicting Message-ID, a stray 3/2.
    m.push(mail("r@example.org", 6, 9, "<re@x>", "Re: [PATCH] qux: fix", &["<qux@x>"], "Looks good.\n"));
    m.push(mail(d, 6, 0, "<qux@x>", "[PATCH] qux: fix", &[], &patch_body("qux")));
    m.push(mail(d, 6, 0, "<qux@x>", "[PATCH] qux: fix, other content", &[], &patch_body("quxx")));
    m.push(mail(d, 3, 2, "<bar3@x>", "[PATCH 3/2] bar: three", &["<bar1@x>"], &patch_body("bar3")));
    // A NUL in the subject and the From name, which PostgreSQL's TEXT refuses.
    m.push(mail("n@example.org", 8, 0, "<nul@x>", "[PATCH] nul: a\0b", &[], &patch_body("nul")));
    // An unclaimed list: stored and threaded, announced for no project.
    m.push(
        String::from_utf8(mail(d, 8, 1, "<other@x>", "[PATCH] other: list", &[], &patch_body("other")))
            .unwrap()
            .replace(LIST, "other.example.org")
            .into_bytes(),
    );
    m
}

/// A fixed shuffle (a linear congruential generator), so a failure names a reproducible order.
fn shuffled<T>(mut v: Vec<T>, seed: u64) -> Vec<T> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for i in (1..v.len()).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v.swap(i, (x >> 33) as usize % (i + 1));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_shapes_in_several_orders_give_the_same_answers() {
    for seed in 0..4u64 {
        let mails = if seed == 0 { shapes() } else { shuffled(shapes(), seed) };
        let p = pair().await;
        // One mail per transaction, then a batch of the rest again (duplicates all).
        let mut batches: Vec<Vec<(Vec<u8>, i64)>> = mails.iter().enumerate().map(|(i, m)| vec![(m.clone(), T + i as i64)]).collect();
        batches.push(mails.iter().map(|m| (m.clone(), T + 1000)).collect());
        p.deliver(batches).await;
        let lines = p.assert_same(&format!("order {seed}")).await;
        assert!(lines > 40, "order {seed}: the shapes made series ({lines} lines)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_list_archive_gives_the_same_answers() {
    let Some(root) = common::corpus("linux-hwmon") else { return };
    let data = std::fs::read(root.join("last-5000.mbox")).unwrap();
    let mails: Vec<Vec<u8>> = common::split_mbox(&data).into_iter().take(1500).collect();
    let p = pair().await;
    let batches = mails.chunks(64).enumerate().map(|(b, c)| c.iter().map(|m| (m.clone(), T + b as i64)).collect()).collect();
    p.deliver(batches).await;
    let lines = p.assert_same("linux-hwmon, first 1500 mails").await;
    assert!(lines > 500, "{lines} lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patchworks_test_series_give_the_same_answers() {
    let Some(root) = common::corpus("patchwork") else { return };
    let mut mails = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(root.join("series")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "mbox")) {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).replace("{{", "{").replace("}}", "}");
        mails.extend(common::split_mbox(text.as_bytes()));
    }
    assert!(mails.len() > 60, "{} mails", mails.len());
    let p = pair().await;
    p.deliver(mails.chunks(16).map(|c| c.iter().map(|m| (m.clone(), T)).collect()).collect()).await;
    p.assert_same("Patchwork's series files").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingesters_on_one_database_store_each_mail_once() {
    // Two processes' worth of ingest on one database, the same mails in opposite orders at
    // once: each mail is stored once, each series once, and the series are those one SQLite
    // store makes of the same mails.
    let p = pair().await;
    let second = Ingest::on_postgres(p.pg.clone(), root(), "u", settings());
    let mails = shapes();
    let (one, two) = (p.postgres.clone(), second.clone());
    let forward = mails.clone();
    let a = tokio::spawn(async move {
        for m in forward {
            one.accept(vec![incoming(m, vec![], T)]).await.unwrap();
        }
    });
    let b = tokio::spawn(async move {
        for m in mails.into_iter().rev() {
            two.accept(vec![incoming(m, vec![], T)]).await.unwrap();
        }
    });
    a.await.unwrap();
    b.await.unwrap();
    let client = p.pg.client().await.unwrap();
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let distinct = shapes().into_iter().collect::<std::collections::BTreeSet<_>>().len() as i64;
    assert_eq!(count("SELECT count(*) FROM mails").await, distinct, "each distinct mail once");
    assert_eq!(count("SELECT count(*) FROM (SELECT uid FROM series GROUP BY uid HAVING count(*) > 1) d").await, 0);
    let received = outbox(&p.pg).await.into_iter().filter(|(t, _)| t == "mail.message.received").count() as i64;
    assert_eq!(received, distinct, "each stored mail announced once");
    let completes: Vec<i64> = outbox(&p.pg)
        .await
        .into_iter()
        .filter(|(t, _)| t == "series.series.complete")
        .map(|(_, b)| b["series"]["id"].as_i64().unwrap())
        .collect();
    let unique: std::collections::BTreeSet<_> = completes.iter().collect();
    assert_eq!(unique.len(), completes.len(), "each series announced complete once: {completes:?}");
}
