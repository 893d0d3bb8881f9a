//! `patchbay import` on real list traffic (`../shared/corpus/linux-hwmon`):
//! public-inbox archives import incrementally, and the mbox import leaves a
//! consistent store. Also `patchbay serve`'s LMTP listener in a real LMTP
//! conversation. The corpus tests say clearly when they did not run, and fail
//! under `CI=true` when the corpus is missing.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_patchbay"));
    c.env_remove("PATCHBAY_CONFIG").env_remove("PATCHBAY_DATA_DIR").env_remove("RUST_LOG");
    c
}

/// The linux-hwmon archive, or `None` with a note (see `patchbay_fixtures::corpus`).
fn corpus() -> Option<PathBuf> {
    patchbay_fixtures::corpus("linux-hwmon")
}

/// Under `CI=true` a missing corpus fails the corpus tests with a sentence saying what is
/// missing and where to get it (it once read `left: Ok("true") right: Ok("true")`).
#[test]
fn a_missing_corpus_says_what_is_missing_and_where_to_get_it() {
    if std::env::var_os("PATCHBAY_CORPUS_SELF_TEST").is_some() {
        return; // the inner run below
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "mbox_import_is_consistent", "--nocapture", "--test-threads", "1"])
        .env("CI", "true")
        .env("PATCHBAY_CORPUS", "/nonexistent/corpus")
        .env("PATCHBAY_CORPUS_SELF_TEST", "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("left:"), "{text}");
    for needed in
        ["/nonexistent/corpus/linux-hwmon does not exist", "../shared/corpus", "https://lore.kernel.org/linux-hwmon/", "README.md"]
    {
        assert!(text.contains(needed), "{needed:?} not in:\n{text}");
    }
}

/// Imports the corpus' `last-5000.mbox` into `dir/data`, with project `hwmon` on the
/// linux-hwmon list; the import's summary.
fn import_last_5000(dir: &Path, corpus: &Path) -> serde_json::Value {
    let config = dir.join("patchbay.toml");
    std::fs::write(&config, "data_dir = \"data\"\n[[project]]\nname = \"hwmon\"\nlist_ids = [\"linux-hwmon.vger.kernel.org\"]\n").unwrap();
    import(&config, &corpus.join("last-5000.mbox"))
}

fn import(config: &Path, what: &Path) -> serde_json::Value {
    let out = bin().arg("--config").arg(config).arg("import").arg("--json").arg(what).output().unwrap();
    assert!(out.status.success(), "import failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("--git-dir").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn public_inbox_imports_only_what_is_new() {
    let Some(root) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(&config, "data_dir = \"data\"\n").unwrap();
    // A copy of the archive, wound back 50 commits: the "before" of a `git fetch`.
    let archive = tmp.path().join("hwmon.git");
    let status = Command::new("git")
        .args(["clone", "-q", "--bare", "--no-local"])
        .arg(root.join("pi-epoch0-tail.git"))
        .arg(&archive)
        .status()
        .unwrap();
    assert!(status.success());
    let head = git(&archive, &["rev-parse", "HEAD"]);
    let branch = git(&archive, &["symbolic-ref", "HEAD"]);
    let total: u64 = git(&archive, &["rev-list", "--count", "HEAD"]).parse().unwrap();
    git(&archive, &["update-ref", &branch, "HEAD~50"]);

    let first = import(&config, &archive);
    assert_eq!(first["read"].as_u64().unwrap() + first["skipped"].as_u64().unwrap(), total - 50);
    assert!(first["stored"].as_u64().unwrap() > 1000, "{first}");

    // The archive moves on by 50 commits; the next import reads exactly those.
    git(&archive, &["update-ref", &branch, &head]);
    let second = import(&config, &archive);
    assert_eq!(second["read"].as_u64().unwrap() + second["skipped"].as_u64().unwrap(), 50, "{second}");
    assert_eq!(second["duplicates"].as_u64().unwrap(), 0, "{second}");

    // Nothing new: nothing read.
    let third = import(&config, &archive);
    assert_eq!(third["read"].as_u64().unwrap(), 0, "{third}");
}

#[test]
fn mbox_import_is_consistent() {
    let Some(root) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let summary = import_last_5000(tmp.path(), &root);
    eprintln!("last-5000.mbox: {}", serde_json::to_string_pretty(&summary).unwrap());
    assert_eq!(summary["read"], 4997);
    let c = &summary["consistency"];
    assert!(c["numbered"].as_u64().unwrap() > 1000);
    assert_eq!(c["misplaced"], 0, "every [PATCH M/T] at slot M of a series of T");
    assert_eq!(c["complete_with_gaps"], 0);
    assert_eq!(c["placed_at_their_slot"].as_u64().unwrap() + c["unplaced"].as_u64().unwrap(), c["numbered"].as_u64().unwrap());
    assert!(summary["series"]["complete"].as_u64().unwrap() > 100);
    // Every cover heads a series or says why not, and no complete series cites into another
    // series' thread but its own re-roll chain's.
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {c}"));
    assert!(n("covers") > 100, "{c}");
    assert_eq!(n("covers_placed") + n("covers_flagged"), n("covers"), "{c}");
    assert_eq!(n("covers_lost"), 0, "{c}");
    assert_eq!(n("complete_citing_other_series"), 0, "{c}");
    // Importing again stores nothing twice.
    let again = import_last_5000(tmp.path(), &root);
    assert_eq!(again["stored"], 0);
    assert_eq!(again["duplicates"], 4997);
}

/// What an import of `last-5000.mbox` stored and published, as the golden file records it:
/// the series (public id, version, size, state, project, name, submitter), each series' members
/// by slot, every message's topic and body in log order (counts per topic and a digest), and
/// the consistency report. Anything that changes what an import decides changes this.
fn import_fingerprint(db: &Path, summary: &serde_json::Value) -> serde_json::Value {
    use sha2::Digest as _;
    let conn = rusqlite::Connection::open(db).unwrap();
    let lines = |sql: &str| -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| Ok((0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect::<Vec<_>>().join("\t")))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let digest = |lines: &[String]| {
        let mut h = sha2::Sha256::new();
        for l in lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let series = lines("SELECT uid, version, total, state, project, name, submitter FROM series ORDER BY uid");
    let members = lines(
        "SELECT s.uid, sm.slot, m.message_id FROM series_mails sm JOIN series s ON s.id = sm.series_id
         JOIN mails m ON m.id = sm.mail_id ORDER BY s.uid, sm.slot",
    );
    let mut topics = std::collections::BTreeMap::<String, u64>::new();
    let events: Vec<String> = {
        let mut stmt = conn.prepare("SELECT topic, wire FROM bus_messages ORDER BY pos").unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .unwrap()
            .map(|row| {
                let (topic, wire) = row.unwrap();
                *topics.entry(topic.clone()).or_default() += 1;
                let env: serde_json::Value = serde_json::from_slice(&wire).unwrap();
                format!("{topic} {}", env["body"])
            })
            .collect()
    };
    serde_json::json!({
        "series": series.len(),
        "series_sha256": digest(&series),
        "members": members.len(),
        "members_sha256": digest(&members),
        "events": topics,
        "events_sha256": digest(&events),
        "consistency": summary["consistency"],
        "by_state": summary["series"],
    })
}

/// Issue 20: making the import faster must not change what it stores or publishes. The
/// series, members, events and consistency report of `last-5000.mbox` are compared with
/// those recorded in `tests/golden/last-5000-import.json` (written before the import's
/// performance work; `PATCHBAY_BLESS=1` writes it again, for a change that means to differ).
#[test]
fn mbox_import_stores_and_publishes_what_it_did_before() {
    let Some(root) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let summary = import_last_5000(tmp.path(), &root);
    let got = import_fingerprint(&tmp.path().join("data/patchbay.sqlite3"), &summary);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/last-5000-import.json");
    if std::env::var_os("PATCHBAY_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
    for key in ["series", "members", "events", "consistency", "by_state", "series_sha256", "members_sha256", "events_sha256"] {
        assert_eq!(got[key], want[key], "{key} differs from {}", golden.display());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn lmtp_answers_per_recipient_only_after_storing() {
    let tmp = tempfile::tempdir().unwrap();
    let (http, lmtp) = (free_port(), free_port());
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[ingest]\nlmtp_listen = \"127.0.0.1:{lmtp}\"\nmax_mail_bytes = 4096\n"),
    )
    .unwrap();
    let mut serve = bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", lmtp)) {
            break s;
        }
        assert!(Instant::now() < deadline, "LMTP listener did not come up");
        std::thread::sleep(Duration::from_millis(50));
    };
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let line = |r: &mut BufReader<std::net::TcpStream>| {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    };
    assert!(line(&mut reader).starts_with("220 "));
    w.write_all(b"LHLO mta.example.org\r\n").unwrap();
    let mut caps = Vec::new();
    loop {
        let l = line(&mut reader);
        caps.push(l.clone());
        if l.starts_with("250 ") {
            break;
        }
    }
    assert!(caps.iter().any(|c| c.contains("SIZE 4096")), "{caps:?}");
    // Pipelined: one transaction, two recipients, dot-stuffed body.
    w.write_all(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<list@example.org>\r\nRCPT TO:<archive@example.org>\r\nDATA\r\n").unwrap();
    for want in ["250 ", "250 ", "250 ", "354 "] {
        let l = line(&mut reader);
        assert!(l.starts_with(want), "{l}");
    }
    w.write_all(b"From: A <a@example.org>\r\nSubject: [PATCH] x: y\r\nMessage-ID: <lmtp-1@example.org>\r\n\r\n..leading dot\r\n.\r\n")
        .unwrap();
    let (r1, r2) = (line(&mut reader), line(&mut reader));
    assert!(r1.starts_with("250 2.0.0") && r2.starts_with("250 2.0.0"), "{r1}{r2}");
    // Too large: 552, per recipient, and the session goes on.
    w.write_all(b"MAIL FROM:<a@example.org> SIZE=999999\r\n").unwrap();
    assert!(line(&mut reader).starts_with("552 "));
    w.write_all(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<list@example.org>\r\nDATA\r\n").unwrap();
    for want in ["250 ", "250 ", "354 "] {
        assert!(line(&mut reader).starts_with(want));
    }
    let big = "x".repeat(100);
    for _ in 0..60 {
        w.write_all(format!("{big}\r\n").as_bytes()).unwrap();
    }
    w.write_all(b".\r\n").unwrap();
    assert!(line(&mut reader).starts_with("552 "));
    w.write_all(b"QUIT\r\n").unwrap();
    assert!(line(&mut reader).starts_with("221 "));
    let _ = Command::new("kill").arg(serve.id().to_string()).status();
    let _ = serve.wait();

    let db = rusqlite::Connection::open(tmp.path().join("data/patchbay.sqlite3")).unwrap();
    let raw: Vec<u8> = db.query_row("SELECT raw FROM mails WHERE message_id = '<lmtp-1@example.org>'", [], |r| r.get(0)).unwrap();
    assert!(String::from_utf8(raw).unwrap().contains("\n.leading dot\n"), "dot-stuffing undone, LF line ends");
    let n: i64 = db.query_row("SELECT count(*) FROM mails", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "stored once for two recipients; the oversized mail not at all");
}

#[test]
fn inject_stores_and_exits_by_sysexits() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(&config, "data_dir = \"data\"\n[ingest]\nmax_mail_bytes = 2048\n").unwrap();
    let run = |input: &[u8]| {
        let mut c =
            bin().arg("--config").arg(&config).args(["inject", "--json"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        c.stdin.take().unwrap().write_all(input).unwrap();
        c.wait_with_output().unwrap()
    };
    let mail = b"From x Mon Jan  1 00:00:00 2024\nFrom: A <a@example.org>\nSubject: hello\nMessage-ID: <inj@x>\n\nbody\n";
    let out = run(mail);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["outcome"], "stored");
    let again: serde_json::Value = serde_json::from_slice(&run(mail).stdout).unwrap();
    assert_eq!(again["result"]["outcome"], "duplicate");
    // Garbage is stored and marked, not refused.
    let junk: serde_json::Value = serde_json::from_slice(&run(b"\0\x01 not a mail").stdout).unwrap();
    assert_eq!(junk["result"]["malformed"], true);
    assert_eq!(run(&vec![b'x'; 4096]).status.code(), Some(65), "too large: a permanent failure");
    // A store that cannot be written: 75, so the MTA retries.
    std::fs::write(tmp.path().join("blocked"), "").unwrap();
    let out = bin().args(["--data-dir"]).arg(tmp.path().join("blocked/data")).arg("inject").stdin(Stdio::piped()).spawn().unwrap();
    let mut out = out;
    out.stdin.take().unwrap().write_all(mail).unwrap();
    assert_eq!(out.wait().unwrap().code(), Some(75));
}

#[test]
fn maildir_and_mbox_import_without_the_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(&config, "data_dir = \"data\"\n").unwrap();
    let md = tmp.path().join("Maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    let m =
        |n: u32| format!("From: A <a@example.org>\nSubject: [PATCH {n}/2] x\nMessage-ID: <md{n}@x>\nIn-Reply-To: <md0@x>\n\nbody {n}\n");
    std::fs::write(md.join("new/1700000001.1.host"), m(1)).unwrap();
    std::fs::write(md.join("cur/1700000002.2.host:2,S"), m(2)).unwrap();
    std::fs::write(md.join("tmp/1700000003.3.host"), m(3)).unwrap();
    let summary = import(&config, &md);
    assert_eq!(summary["read"], 2, "tmp/ is not delivered mail: {summary}");
    assert_eq!(summary["stored"], 2);
    // The same mails as an mboxo file with a quoted From line in a body: stored once, nothing new.
    let mbox = tmp.path().join("x.mbox");
    std::fs::write(&mbox, format!("From a Mon Jan  1 00:00:00 2024\n{}\nFrom b Mon Jan  1 00:00:00 2024\n{}>From the body\n", m(1), m(2)))
        .unwrap();
    let again = import(&config, &mbox);
    assert_eq!(again["read"], 2);
    assert_eq!(again["stored"], 1, "mail 2 differs by its body line: {again}");
    assert_eq!(again["duplicates"], 1);
}

mod common;

/// `patchbay serve`, stopped (SIGTERM, then waited for) when dropped.
struct Serve(std::process::Child);
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Commits each mail as the next message of the public-inbox epoch `work` pushes to `bare`
/// (one commit per mail, the mail in `m`, as public-inbox v2 writes).
fn inbox_add(work: &Path, bare: &Path, mails: &[String]) {
    for mail in mails {
        std::fs::write(work.join("m"), mail).unwrap();
        patchbay_fixtures::git(work, &["add", "m"]);
        patchbay_fixtures::git(work, &["commit", "-q", "-m", "m"]);
    }
    patchbay_fixtures::git(work, &["push", "-q", &bare.to_string_lossy(), "HEAD:refs/heads/master"]);
}

fn note(i: usize) -> String {
    format!(
        "From: Ann <ann@example.org>\nTo: follow@example.org\nSubject: note {i}\nDate: Mon, 7 Dec 2026 10:00:{i:02} +0000\n\
         Message-ID: <follow-{i}@example.org>\n\nThe {i}th note.\n"
    )
}

/// The Message-IDs announced as received, in order.
fn received(db: &Path) -> Vec<String> {
    let Ok(conn) = rusqlite::Connection::open(db) else { return vec![] };
    let Ok(mut stmt) = conn.prepare("SELECT wire FROM bus_messages WHERE topic = 'patchbay.dev.mail.message.received' ORDER BY pos") else {
        return vec![];
    };
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|w| serde_json::from_slice::<serde_json::Value>(&w.unwrap()).unwrap()["body"]["message_id"].as_str().unwrap().to_string())
        .collect()
}

fn bodies(db: &Path, topic: &str) -> Vec<serde_json::Value> {
    let Ok(conn) = rusqlite::Connection::open(db) else { return vec![] };
    let Ok(mut stmt) = conn.prepare("SELECT wire FROM bus_messages WHERE topic = ?1 ORDER BY pos") else { return vec![] };
    stmt.query_map([topic], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|w| serde_json::from_slice::<serde_json::Value>(&w.unwrap()).unwrap()["body"].clone())
        .collect()
}

/// `[[source]]`: `serve` follows a public-inbox archive by URL without an MTA. A fetch that
/// fails (the archive is not there yet) is retried with backoff and shown on the dashboard,
/// and loses nothing; commits added while it follows are imported once each; a restart resumes
/// from the mark.
#[test]
fn serve_follows_a_public_inbox_archive_and_imports_each_mail_once() {
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging.git");
    let inbox = tmp.path().join("inbox.git");
    let work = tmp.path().join("work");
    patchbay_fixtures::git(tmp.path(), &["init", "-q", "--bare", "-b", "master", &staging.to_string_lossy()]);
    patchbay_fixtures::git(tmp.path(), &["init", "-q", "-b", "master", &work.to_string_lossy()]);
    inbox_add(&work, &staging, &[note(1), note(2)]);

    let port = common::free_port();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[ingest]\nlmtp_listen = \"\"\n\
             [[source]]\nlist_id = \"follow.example.org\"\nrepository = \"file://{}\"\ninterval_secs = 1\n",
            inbox.display()
        ),
    )
    .unwrap();
    let serve = |log: &str| {
        let err = std::fs::File::create(tmp.path().join(log)).unwrap();
        Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(err).spawn().unwrap())
    };
    let db = tmp.path().join("data/patchbay.sqlite3");
    let first = serve("serve-1.log");
    // Not there yet: the fetch fails, is retried, and the dashboard says so.
    common::wait_until("a failed fetch", 30, &[], || !bodies(&db, "patchbay.dev.mail.source.failed").is_empty());
    common::wait_until("the sources page", 30, &[], || common::http_get(port, "/sources").contains("fetch failed"));
    let page = common::http_get(port, "/sources");
    assert!(page.contains("follow.example.org") && page.contains("retrying in"), "{page}");
    std::fs::rename(&staging, &inbox).unwrap();
    common::wait_until("the first two mails", 60, &[], || received(&db).len() >= 2);
    // Commits while it follows: each imported once.
    inbox_add(&work, &inbox, &[note(3), note(4), note(5)]);
    common::wait_until("three more mails", 60, &[], || received(&db).len() >= 5);
    drop(first);
    // Stopped, the archive grows; started again, it resumes from the mark.
    inbox_add(&work, &inbox, &[note(6), note(7)]);
    let _second = serve("serve-2.log");
    common::wait_until("the last two mails", 60, &[], || received(&db).len() >= 7);
    std::thread::sleep(Duration::from_secs(3));
    let ids = received(&db);
    let wanted: Vec<String> = (1..=7).map(|i| format!("<follow-{i}@example.org>")).collect();
    assert_eq!(ids, wanted, "each mail once, in order");
    let fetched = bodies(&db, "patchbay.dev.mail.source.fetched");
    assert!(fetched.iter().all(|f| f["duplicates"] == 0), "nothing read twice: {fetched:#?}");
    assert_eq!(fetched.iter().map(|f| f["stored"].as_u64().unwrap()).sum::<u64>(), 7, "{fetched:#?}");
    let lists: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM mail_lists WHERE list_id = 'follow.example.org'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(lists, 7, "each mail recorded as come through the source's list");
    common::wait_until("the page to say ok", 30, &[], || common::http_get(port, "/sources").contains(">ok<"));
}
