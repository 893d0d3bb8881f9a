//! Issue 15's run: the whole pipeline as separate processes on a throwaway RabbitMQ node and a
//! throwaway PostgreSQL cluster of its own (`scripts/rabbitmq`, `scripts/postgres`), two of
//! each service (three runners), 200 series posted to two ingest hosts in different orders at
//! once, good and broken ones. Mid-run RabbitMQ restarts, then PostgreSQL, then one instance of
//! each service is killed with SIGKILL in turn and started again. The run completes, and the
//! test counts what the issue asks: each series once, each (series, test, arch) recorded once,
//! one verdict per series, the right one, one report mail each, threaded, with its own
//! Message-ID. Needs Debian's rabbitmq-server and postgresql; fails, never skips, without them.
//! It takes a few minutes: it is the suite's longest test.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{Proc, format_series, wait_until};

const SERIES: usize = 200;
const LIST: &str = "scale.lists.example.org";

/// Runs `scripts/<script> ACTION DIR`; what it printed (the URL on start).
fn script(script: &str, action: &str, dir: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(script);
    let out = std::process::Command::new(path).arg(action).arg(dir).output().unwrap_or_else(|e| panic!("scripts/{script}: {e}"));
    assert!(out.status.success(), "scripts/{script} {action} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A host's config: its data directory and instance, the shared broker and database.
fn host(tmp: &Path, name: &str, data: &str, amqp: &str, pg: &str, repo: &Path) -> PathBuf {
    let path = tmp.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{data}\"\n[identity]\ninstance = \"{name}\"\n\
             [bus]\nbackend = \"amqp\"\nurl = \"{amqp}\"\nexchange = \"scale\"\nprefix = \"e2e\"\nenv = \"scale\"\n\
             [store]\nurl = \"{pg}\"\nmax_connections = 4\n[runner]\njobs = 2\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"check\"\nscript = \"sh test.sh\"\narches = [\"{}\"]\ntime_limit_secs = 120\n",
            repo.display(),
            std::env::consts::ARCH
        ),
    )
    .unwrap();
    path
}

/// Delivers `mails` over LMTP as an MTA does: a mail refused for now (451 while PostgreSQL
/// restarts) or a dropped connection is tried again until `deadline`.
fn deliver(port: u16, mails: &[String], deadline: Instant) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut next = 0;
    while next < mails.len() {
        assert!(Instant::now() < deadline, "LMTP delivery to {port} did not finish: {next} of {}", mails.len());
        let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut line = String::new();
        let mut answer = |reader: &mut BufReader<std::net::TcpStream>| -> Option<String> {
            loop {
                line.clear();
                if reader.read_line(&mut line).ok()? == 0 {
                    return None;
                }
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    return Some(line.clone());
                }
            }
        };
        if answer(&mut reader).is_none_or(|a| !a.starts_with("220")) || writer.write_all(b"LHLO test\r\n").is_err() {
            continue;
        }
        if answer(&mut reader).is_none_or(|a| !a.starts_with("250")) {
            continue;
        }
        while next < mails.len() {
            let body: String =
                mails[next].lines().map(|l| if l.starts_with('.') { format!(".{l}\r\n") } else { format!("{l}\r\n") }).collect();
            let sent = writer.write_all(format!("MAIL FROM:<dev@example.org>\r\nRCPT TO:<list@{LIST}>\r\nDATA\r\n").as_bytes()).is_ok()
                && [answer(&mut reader), answer(&mut reader), answer(&mut reader)]
                    .iter()
                    .all(|a| a.as_ref().is_some_and(|a| a.starts_with('2') || a.starts_with('3')))
                && writer.write_all(format!("List-Id: <{LIST}>\r\n{body}.\r\n").as_bytes()).is_ok()
                && answer(&mut reader).is_some_and(|a| a.starts_with("250"));
            if !sent {
                std::thread::sleep(Duration::from_millis(300));
                break; // a new connection, the same mail again
            }
            next += 1;
        }
    }
}

/// The mails of `series` in a fixed shuffle (a linear congruential generator).
fn shuffled(mut v: Vec<String>, seed: u64) -> Vec<String> {
    let mut x = seed;
    for i in (1..v.len()).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v.swap(i, (x >> 33) as usize % (i + 1));
    }
    v
}

/// The series number a name or subject carries ("the s12 series", "s12: part 1").
fn number(name: &str) -> usize {
    name.split(|c: char| !c.is_ascii_alphanumeric()).find_map(|w| w.strip_prefix('s')?.parse().ok()).unwrap_or_else(|| panic!("{name}"))
}

fn want(n: usize) -> &'static str {
    if n.is_multiple_of(3) { "FAILED" } else { "PASSED" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_series_through_restarts_and_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let (rmq_dir, pg_dir) = (tmp.path().join("rabbitmq"), tmp.path().join("postgres"));
    let amqp = script("rabbitmq", "start", &rmq_dir);
    let admin = script("postgres", "start", &pg_dir);
    let _stop = Stop((rmq_dir.clone(), pg_dir.clone()));
    let pg = patchbay_store_pg::testing::scratch_database(&admin).await.unwrap();

    let repo = patchbay_fixtures::origin(tmp.path(), &[("README", "base\n"), ("test.sh", "set -e\ngrep -q fixed README\n")]);
    let (a, b, c) = (
        host(tmp.path(), "a", "data-a", &amqp, &pg, &repo),
        host(tmp.path(), "b", "data-b", &amqp, &pg, &repo),
        host(tmp.path(), "c", "data-c", &amqp, &pg, &repo),
    );
    // Both reporters write into one maildir, as they would hand mail to one SMTP server.
    let (ra, rb) = (host(tmp.path(), "ra", "data-r", &amqp, &pg, &repo), host(tmp.path(), "rb", "data-r", &amqp, &pg, &repo));
    let (la, lb) = (common::free_port(), common::free_port());
    let lmtp = |p: u16| vec!["--lmtp".to_string(), format!("127.0.0.1:{p}")];
    let start = |config: &Path, service: &str, extra: &[String]| {
        Proc::start(config, tmp.path(), service, &extra.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // (service, config, extra arguments), one process each.
    let plan: Vec<(&str, PathBuf, Vec<String>)> = vec![
        ("relay", a.clone(), vec![]),
        ("relay", b.clone(), vec![]),
        ("ingest", a.clone(), lmtp(la)),
        ("ingest", b.clone(), lmtp(lb)),
        ("dispatcher", a.clone(), vec![]),
        ("dispatcher", b.clone(), vec![]),
        ("runner", a.clone(), vec![]),
        ("runner", b.clone(), vec![]),
        ("runner", c.clone(), vec![]),
        ("aggregator", a.clone(), vec![]),
        ("aggregator", b.clone(), vec![]),
        ("reporter", ra.clone(), vec![]),
        ("reporter", rb.clone(), vec![]),
    ];
    let mut procs: Vec<Proc> = plan.iter().map(|(s, config, extra)| start(config, s, extra)).collect();
    let all = |procs: &Vec<Proc>| -> Vec<String> { procs.iter().map(|p| p.stderr()).collect() };
    for port in [la, lb] {
        let refs: Vec<&Proc> = procs.iter().collect();
        wait_until("the LMTP listeners", 120, &refs, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }
    for p in &procs {
        wait_until("every service started", 120, &[p], || p.stderr().contains("Service started") || p.stderr().contains("Running."));
    }

    // 200 series, one or two patches each; every third is broken.
    let mut mails = Vec::new();
    for n in 0..SERIES {
        let content = if want(n) == "FAILED" { "broken\n" } else { "fixed\n" };
        let mut changes = vec![("README", content)];
        if n % 4 == 0 {
            changes.push(("NOTES", "more\n"));
        }
        // Each from its own submitter: 200 postings by one person in one second would all be
        // candidates of each other's markers (a shape of its own, see the closing note of #15).
        let posted = format_series(&repo, &format!("s{n}"), "main", &changes, "", None);
        mails.extend(posted.into_iter().map(|m| m.replace("dev@example.org", &format!("dev{n}@example.org"))));
    }
    let (forward, other) = (mails.clone(), shuffled(mails.clone(), 7));
    let thirds = |v: &Vec<String>| -> Vec<Vec<String>> { v.chunks(v.len().div_ceil(3)).map(<[String]>::to_vec).collect() };
    let (fa, fb) = (thirds(&forward), thirds(&other));
    let deadline = Instant::now() + Duration::from_secs(600);
    let both = |i: usize| {
        let (x, y) = (fa[i].clone(), fb[i].clone());
        let one = std::thread::spawn(move || deliver(la, &x, deadline));
        let two = std::thread::spawn(move || deliver(lb, &y, deadline));
        one.join().unwrap();
        two.join().unwrap();
    };

    both(0);
    // RabbitMQ goes away and comes back: the processes reconnect, the outbox waits.
    script("rabbitmq", "stop", &rmq_dir);
    std::thread::sleep(Duration::from_secs(2));
    script("rabbitmq", "start", &rmq_dir);
    both(1);
    // PostgreSQL goes away and comes back: writes in flight fail and are retried.
    script("postgres", "stop", &pg_dir);
    std::thread::sleep(Duration::from_secs(2));
    script("postgres", "start", &pg_dir);
    both(2);
    // One instance of each service, in turn, is killed mid-run and started again.
    for (i, (service, config, extra)) in plan.iter().enumerate().filter(|(i, _)| i % 2 == 0 || *i == 8) {
        let old = std::mem::replace(&mut procs[i], start(config, service, extra));
        old.kill9();
        std::thread::sleep(Duration::from_millis(700));
    }

    // Wait for every report, then a little more for anything doubled.
    let outbox = tmp.path().join("data-r/outbox/new");
    let reports = || -> Vec<String> {
        std::fs::read_dir(&outbox).map(|d| d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect()).unwrap_or_default()
    };
    let until = Instant::now() + Duration::from_secs(900);
    while reports().len() < SERIES {
        assert!(Instant::now() < until, "{} of {SERIES} reports:\n{}", reports().len(), all(&procs).join("\n-----\n"));
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(5));

    let store = patchbay_store_pg::PgStore::connect(&pg, 2, patchbay_bus::Sealer::default()).await.unwrap();
    let client = store.client().await.unwrap();
    let count = async |sql: &str| -> i64 { client.query_one(sql, &[]).await.unwrap().get(0) };
    let distinct: HashSet<&String> = mails.iter().collect();
    assert_eq!(count("SELECT count(*) FROM mails").await, distinct.len() as i64, "each mail stored once");
    assert_eq!(count("SELECT count(*) FROM series").await, SERIES as i64, "each series once");
    assert_eq!(count("SELECT count(*) FROM series WHERE state = 'complete'").await, SERIES as i64);
    assert_eq!(
        count("SELECT count(*) FROM (SELECT DISTINCT series_id, version, test, arch FROM results) r").await,
        2 * SERIES as i64,
        "apply and check of every series"
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM (SELECT 1 FROM results WHERE NOT duplicate GROUP BY series_id, version, test, arch HAVING count(*) > 1) d"
        )
        .await,
        0,
        "each (series, version, test, arch) recorded once"
    );
    let verdicts = client
        .query("SELECT s.name, v.verdict FROM verdicts v JOIN series s ON s.uid = v.series_id WHERE v.verdict IS NOT NULL", &[])
        .await
        .unwrap();
    assert_eq!(verdicts.len(), SERIES, "one verdict per series version");
    for r in &verdicts {
        let (name, verdict): (&str, &str) = (r.get(0), r.get(1));
        assert_eq!(verdict, want(number(name)), "{name}");
    }
    // A reporter killed between its claim and its record leaves its report `sending`, its file
    // already in the maildir: on a shared store another reporter takes the claim over only
    // after its 10-minute lease (and the maildir takes the file once). Such a report's mail
    // must be there, once, like every other.
    assert_eq!(count("SELECT count(*) FROM reports WHERE state IN ('sent', 'sending')").await, SERIES as i64);
    let sending: Vec<String> =
        client.query("SELECT message_id FROM reports WHERE state = 'sending'", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    if !sending.is_empty() {
        eprintln!("{} report(s) left `sending` by the reporter killed while delivering: {sending:?}", sending.len());
    }
    let reports = reports();
    assert_eq!(reports.len(), SERIES, "one report mail per series");
    let header = |m: &str, h: &str| m.lines().find_map(|l| l.strip_prefix(h)).unwrap_or_default().to_string();
    let ids: HashSet<String> = reports.iter().map(|m| header(m, "Message-ID: ")).collect();
    assert_eq!(ids.len(), SERIES, "distinct Message-IDs");
    for id in &sending {
        assert!(ids.contains(id), "the report {id} left `sending` is in the maildir");
    }
    for m in &reports {
        assert!(!header(m, "In-Reply-To: ").is_empty(), "threaded: {m}");
        let subject = header(m, "Subject: ");
        assert_eq!(header(m, "X-Patchbay-Verdict: "), want(number(&subject)), "{subject}");
    }
    let until = Instant::now() + Duration::from_secs(60);
    while count("SELECT count(*) FROM outbox WHERE relayed_at IS NULL").await > 0 {
        assert!(Instant::now() < until, "the outbox drains");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(procs);
}

/// Stops the throwaway node and cluster however the test ends.
struct Stop((PathBuf, PathBuf));

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq"))
            .arg("stop")
            .arg(&self.0.0)
            .status();
        let _ = std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres"))
            .arg("stop")
            .arg(&self.0.1)
            .status();
    }
}
