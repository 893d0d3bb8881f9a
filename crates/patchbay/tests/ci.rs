//! The test pipeline end to end in the embedded shape: `patchbay serve` with a
//! project whose repository is made here, series posted with `patchbay inject`
//! (real `git format-patch` mail), and the `ci.test.finished` results read
//! back from the bus: a good series passes apply and build, a broken one
//! fails with the compiler's error, one that does not apply fails `apply`
//! naming the patch, and nothing published names the runner's paths.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIST: &str = "ci.lists.example.org";

mod common;
use common::{bin, format_series, free_port, http_get, http_method, received_hooks, start_receiver};
use patchbay_fixtures::{git, git_with, origin};

struct Serve(Child);
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Posts a series made from `changes` on a branch off main, one `inject` per mail.
fn post(repo: &Path, config: &Path, name: &str, from: &str, changes: &[(&str, &str)]) {
    post_with(repo, config, name, from, changes, "");
}

/// Posts a series whose cover letter says `blurb`; returns the cover letter's Message-ID.
fn post_with(repo: &Path, config: &Path, name: &str, from: &str, changes: &[(&str, &str)], blurb: &str) -> String {
    let mails = format_series(repo, name, from, changes, blurb, None);
    inject_all(config, &mails);
    mails[0].lines().find_map(|l| l.strip_prefix("Message-ID: ").or_else(|| l.strip_prefix("Message-Id: "))).unwrap().to_string()
}

fn http_post(port: u16, path: &str, body: &str, token: Option<&str>) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    http_raw(port, path, &format!("{auth}Content-Type: application/json\r\n"), body).1
}

fn topic_bodies(db: &Path, topic: &str) -> Vec<serde_json::Value> {
    let Ok(conn) = rusqlite::Connection::open(db) else { return vec![] };
    let Ok(mut stmt) = conn.prepare("SELECT wire FROM bus_messages WHERE topic = ?1 ORDER BY pos") else { return vec![] };
    stmt.query_map([topic], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|w| serde_json::from_slice::<serde_json::Value>(&w.unwrap()).unwrap()["body"].clone())
        .collect()
}

fn results(db: &Path) -> Vec<serde_json::Value> {
    let Ok(conn) = rusqlite::Connection::open(db) else { return vec![] };
    let Ok(mut stmt) = conn.prepare("SELECT wire FROM bus_messages WHERE topic = 'e2e.ci.ci.test.finished' ORDER BY pos") else {
        return vec![];
    };
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|w| serde_json::from_slice::<serde_json::Value>(&w.unwrap()).unwrap()["body"].clone())
        .collect()
}

fn find<'a>(all: &'a [serde_json::Value], name: &str, test: &str) -> Option<&'a serde_json::Value> {
    all.iter().find(|r| r["series"]["name"] == format!("the {name} series") && r["test"] == test)
}

#[test]
fn series_are_applied_built_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(
        tmp.path(),
        &[
            ("hello.c", "#include <stdio.h>\nint main(void) {\n\tputs(\"hello\");\n\treturn 0;\n}\n"),
            ("test.sh", "set -e\ncc -Wall -o hello hello.c\n./hello\necho TESTS PASSED\n"),
        ],
    );

    let config = tmp.path().join("patchbay.toml");
    let http = free_port();
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{http}\"\nadmin_tokens = {{ maintainer = \"0123456789abcdef-token\" }}\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
             [runner]\njobs = 2\ncapabilities = [\"x86_64\"]\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"build\"\nscript = \"sh test.sh\"\narches = [\"x86_64\"]\ntime_limit_secs = 60\n",
            repo.display()
        ),
    )
    .unwrap();
    let _serve = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());

    let good = "#include <stdio.h>\nint main(void) {\n\tputs(\"hello, world\");\n\treturn 0;\n}\n";
    let broken = "#include <stdio.h>\nint main(void) {\n\tputs(\"hello\")\n\treturn 0;\n}\n";
    // "stale" was written against the first commit; main has moved on since, in the same lines.
    let first = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(repo.join("hello.c"), "#include <stdio.h>\nint main(void) {\n\tputs(\"hi\");\n\treturn 0;\n}\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "say hi"]);
    post(&repo, &config, "stale", &first, &[("README", "x\n"), ("hello.c", good)]);
    let good_cover = post_with(&repo, &config, "good", "main", &[("README", "docs\n"), ("hello.c", good)], "");
    post(&repo, &config, "broken", "main", &[("hello.c", broken)]);
    // "ontop" only applies after "good": it says so, and the runner applies "good" first.
    let more = "#include <stdio.h>\nint main(void) {\n\tputs(\"hello, world\");\n\tputs(\"again\");\n\treturn 0;\n}\n";
    post_with(&repo, &config, "ontop", "good", &[("hello.c", more)], &format!("Based-on: {good_cover}"));

    let db = tmp.path().join("data/patchbay.sqlite3");
    let deadline = Instant::now() + Duration::from_secs(120);
    let all = loop {
        let all = results(&db);
        if all.len() >= 8 || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(all.len(), 8, "apply + build for four series: {all:#?}");

    let names: Vec<String> = all.iter().map(|r| format!("{} {} {}", r["series"]["name"], r["test"], r["outcome"])).collect();
    let apply = find(&all, "good", "apply").unwrap_or_else(|| panic!("{names:#?}"));
    assert_eq!(apply["outcome"], "PASSED", "{apply:#}");
    let build = find(&all, "good", "build").unwrap();
    assert_eq!(build["outcome"], "PASSED", "{build:#}");
    assert!(build["excerpt"].as_str().unwrap().contains("TESTS PASSED"));
    assert_eq!(build["base"]["reason"], "branch main");

    let ontop = find(&all, "ontop", "build").unwrap();
    assert_eq!(ontop["outcome"], "PASSED", "applied on top of its Based-on series: {ontop:#}");
    assert!(ontop["excerpt"].as_str().unwrap().contains("TESTS PASSED"));

    let build = find(&all, "broken", "build").unwrap();
    assert_eq!((build["outcome"].as_str(), build["reason"].as_str()), (Some("FAILED"), Some("failed")), "{build:#}");
    assert!(build["excerpt"].as_str().unwrap().contains("hello.c:3"), "the compiler's error: {build:#}");
    // The full log is kept (compressed) and served over HTTP.
    let job = build["job"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        let r = http_get(http, &format!("/api/v1/logs/{job}"));
        if r.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.to_ascii_lowercase().contains("x-patchbay-log-complete: true"), "{response}");
    assert!(response.contains("hello.c:3") && response.contains("error"), "{response}");
    assert!(http_get(http, "/api/v1/logs/no-such-job").starts_with("HTTP/1.1 404"));

    let apply = find(&all, "stale", "apply").unwrap();
    assert_eq!((apply["outcome"].as_str(), apply["reason"].as_str()), (Some("FAILED"), Some("apply")), "{apply:#}");
    assert_eq!(apply["failed_patch"], "0002 stale: part 2", "the patch that does not apply is named");
    assert!(apply["excerpt"].as_str().unwrap().contains("hello, world"), "with its rejected hunk");
    let build = find(&all, "stale", "build").unwrap();
    assert_eq!((build["outcome"].as_str(), build["reason"].as_str()), (Some("ERROR"), Some("series-does-not-apply")));

    // One verdict per series version.
    let deadline = Instant::now() + Duration::from_secs(30);
    let verdicts = loop {
        let v = topic_bodies(&db, "e2e.ci.ci.series.verdict");
        if v.len() >= 4 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let verdict = |name: &str| {
        let v: Vec<_> = verdicts.iter().filter(|v| v["series"]["name"] == format!("the {name} series")).collect();
        assert_eq!(v.len(), 1, "one verdict for {name}: {verdicts:#?}");
        (v[0]["verdict"].as_str().unwrap().to_string(), v[0]["failed"].clone())
    };
    assert_eq!(verdict("good"), ("PASSED".into(), serde_json::json!([])));
    assert_eq!(verdict("ontop"), ("PASSED".into(), serde_json::json!([])));
    assert_eq!(verdict("broken"), ("FAILED".into(), serde_json::json!(["build/x86_64"])));
    assert_eq!(verdict("stale"), ("FAILED".into(), serde_json::json!(["apply"])));
    assert_eq!(verdicts.len(), 4);

    // The results API.
    let json = |path: &str| -> serde_json::Value {
        let r = http_get(http, path);
        assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
        serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    assert_eq!(json("/api/v1/results?test=apply")["results"].as_array().unwrap().len(), 4);
    let failed = json("/api/v1/results?outcome=failed");
    let failed: Vec<String> = failed["results"].as_array().unwrap().iter().map(|r| r["test"].as_str().unwrap().to_string()).collect();
    assert_eq!(failed.len(), 2, "broken's build and stale's apply: {failed:?}");
    let one = build["series"]["id"].as_i64().unwrap();
    let latest = json(&format!("/api/v1/results?series={one}&latest=true"));
    assert_eq!(latest["results"].as_array().unwrap().len(), 2, "apply and build of one series");
    assert!(http_get(http, "/api/v1/results?outcome=maybe").starts_with("HTTP/1.1 400"));
    assert!(http_get(http, "/api/v1/results?colour=red").starts_with("HTTP/1.1 400"));
    // Waiving needs the admin token.
    let failed_id = json("/api/v1/results?outcome=failed&test=build")["results"][0]["id"].as_i64().unwrap();
    let path = format!("/api/v1/results/{failed_id}/waive");
    let body = r#"{"comment": "known compiler bug"}"#;
    assert!(http_post(http, &path, body, None).starts_with("HTTP/1.1 401"));
    assert!(http_post(http, &path, body, Some("wrong-token-wrong-token")).starts_with("HTTP/1.1 401"));
    let ok = http_post(http, &path, body, Some("0123456789abcdef-token"));
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("\"by\":\"maintainer\""), "{ok}");
    assert!(http_post(http, "/api/v1/results/999999/waive", body, Some("0123456789abcdef-token")).starts_with("HTTP/1.1 404"));
    let waived = json("/api/v1/results?outcome=failed&test=build");
    assert_eq!(waived["results"][0]["waived"], true);
    assert_eq!(waived["results"][0]["waiver"], "known compiler bug");

    // One report per verdict in the outbox, threaded under the series' cover letter.
    let outbox = tmp.path().join("data/outbox/new");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mails = loop {
        let mails: Vec<String> = std::fs::read_dir(&outbox)
            .map(|d| d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect())
            .unwrap_or_default();
        if mails.len() >= 4 || Instant::now() > deadline {
            break mails;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(mails.len(), 4, "one report per verdict");
    let header = |mail: &str, name: &str| {
        mail.split("\n\n")
            .next()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .unwrap_or_default()
    };
    let good = mails.iter().find(|m| header(m, "Subject").contains("the good series")).expect("a report on the good series");
    assert_eq!(header(good, "Subject"), "Re: [PATCH 0/2] the good series");
    assert_eq!(header(good, "In-Reply-To"), good_cover);
    assert_eq!(header(good, "X-Patchbay-Verdict"), "PASSED");
    assert_eq!(header(good, "Auto-Submitted"), "auto-generated");
    assert!(good.contains("build/x86_64") && good.contains("apply"), "{good}");
    let broken = mails.iter().find(|m| header(m, "Subject").contains("the broken series")).unwrap();
    assert_eq!(header(broken, "X-Patchbay-Verdict"), "FAILED");
    assert!(broken.contains("| hello.c:3"), "the failing excerpt is quoted: {broken}");
    assert!(
        broken.contains("To reproduce: apply the series with `git am -3` on the base above,\nthen in the tree:\n  # build\n  sh test.sh\n"),
        "the failing test's script: {broken}"
    );
    // A series that does not apply: the patch, the file, the hunk, once, in under 40 lines.
    let stale = mails.iter().find(|m| header(m, "Subject").contains("the stale series")).unwrap();
    let body = stale.split_once("\n\n").unwrap().1;
    assert!(body.contains("patch 2/2 does not apply") && body.contains("  Patch:  [2/2] stale: part 2\n"), "{stale}");
    assert!(body.contains("  File:   hello.c\n") && body.contains("| +\tputs(\"hello, world\");"), "{stale}");
    assert!(body.lines().count() < 40, "{stale}");
    for m in &mails {
        assert!(!m.contains(&tmp.path().display().to_string()), "no runner paths in mail: {m}");
    }

    // The process's metrics, as a Prometheus server scrapes them.
    let scraped = http_get(http, "/metrics");
    assert!(scraped.starts_with("HTTP/1.1 200") && scraped.contains("application/openmetrics-text"), "{scraped}");
    let value = |name: &str| -> f64 {
        scraped
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{scraped}"))
    };
    assert!(value("patchbay_mails_stored_total") >= 10.0, "covers and patches of four series are stored");
    assert!(value("patchbay_jobs_queued_total") >= 8.0, "apply and build for four series");
    assert_eq!(value("patchbay_jobs_running"), 0.0, "nothing runs once every result is in");
    assert!(value("patchbay_messages_handled_total{service=\"aggregator\"}") >= 8.0);
    assert!(value("patchbay_messages_handled_total{service=\"reporter\"}") >= 4.0);
    assert!(value("patchbay_handler_seconds_count{service=\"runner\"}") >= 8.0, "every job's handler is timed");
    assert_eq!(value("patchbay_report_seconds_count"), 4.0, "one observation per report handed over");

    // Nothing published names the runner's paths or host.
    let data = tmp.path().display().to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    for r in &all {
        let text = r.to_string();
        assert!(!text.contains(&format!("{data}/data")), "a runner path leaked: {text}");
        assert!(host.len() < 4 || !text.contains(&host), "the host name leaked: {text}");
    }
}

/// `serve --no-runner` and a `patchbay runner` per name in `names`, all on config `common` (each
/// runner its own instance, its stderr in `<name>.log`), started in order 300 ms apart; returns
/// serve's config, serve and the named runners.
fn serve_with_runners(tmp: &Path, common: &str, names: &[&'static str]) -> (PathBuf, Serve, Vec<(&'static str, Serve)>) {
    let config = tmp.join("serve.toml");
    std::fs::write(&config, format!("{common}[http]\nlisten = \"127.0.0.1:{}\"\n", free_port())).unwrap();
    let serve = Serve(
        bin().arg("--config").arg(&config).args(["serve", "--no-runner"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    );
    let mut runners = Vec::new();
    for &name in names {
        let c = tmp.join(format!("{name}.toml"));
        std::fs::write(&c, format!("{common}[identity]\ninstance = \"{name}\"\n")).unwrap();
        let log = std::fs::File::create(tmp.join(format!("{name}.log"))).unwrap();
        runners.push((name, Serve(bin().arg("--config").arg(&c).arg("runner").stdout(Stdio::null()).stderr(log).spawn().unwrap())));
        std::thread::sleep(Duration::from_millis(300));
    }
    (config, serve, runners)
}

fn started_by(db: &Path) -> Vec<(String, String)> {
    started_by_in(db, "ci")
}

/// [`started_by`] under topic env `env`.
fn started_by_in(db: &Path, env: &str) -> Vec<(String, String)> {
    let Ok(conn) = rusqlite::Connection::open(db) else { return vec![] };
    let Ok(mut stmt) = conn.prepare("SELECT wire FROM bus_messages WHERE topic = ?1 ORDER BY pos") else {
        return vec![];
    };
    stmt.query_map([format!("e2e.{env}.ci.test.started")], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|w| {
            let env: serde_json::Value = serde_json::from_slice(&w.unwrap()).unwrap();
            (env["body"]["job"].as_str().unwrap().to_string(), env["sender"]["instance"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn a_job_survives_its_runner_being_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let data = tmp.path().join("data");
    let common = format!(
        "data_dir = \"{}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
         [runner]\njobs = 1\ncapabilities = [\"x86_64\"]\n\
         [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
         [[project.test]]\nname = \"slow\"\nscript = \"sleep 4; echo SLOW DONE\"\narches = [\"x86_64\"]\ntime_limit_secs = 60\n",
        data.display(),
        repo.display()
    );
    let (config, _serve, mut runners) = serve_with_runners(tmp.path(), &common, &["runner-a", "runner-b"]);

    post(&repo, &config, "long", "main", &[("README", "changed\n")]);
    let db = data.join("patchbay.sqlite3");
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some((_, who)) = started_by(&db).into_iter().find(|(job, _)| job.contains("-slow-")) {
            break who;
        }
        assert!(Instant::now() < deadline, "the slow job never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    // SIGKILL the runner that has the job, mid-job.
    let (_, victim) = runners.iter_mut().find(|(n, _)| *n == first).unwrap();
    let _ = Command::new("kill").args(["-KILL", &victim.0.id().to_string()]).status();
    let _ = victim.0.wait();

    let deadline = Instant::now() + Duration::from_secs(90);
    let finished = loop {
        let done: Vec<_> = results(&db).into_iter().filter(|r| r["test"] == "slow").collect();
        if !done.is_empty() || Instant::now() > deadline {
            break done;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(finished.len(), 1, "the job finished once: {finished:#?}");
    assert_eq!(finished[0]["outcome"], "PASSED", "{:#}", finished[0]);
    assert!(finished[0]["excerpt"].as_str().unwrap().contains("SLOW DONE"));
    let starts: Vec<String> = started_by(&db).into_iter().filter(|(j, _)| j.contains("-slow-")).map(|(_, w)| w).collect();
    assert_eq!(starts.len(), 2, "started by the killed runner, then by the other: {starts:?}");
    assert_ne!(starts[0], starts[1]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(results(&db).into_iter().filter(|r| r["test"] == "slow").count(), 1, "and only once");
}

#[test]
fn a_runner_without_bubblewrap_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(&config, "data_dir = \"data\"\n").unwrap();
    // A PATH without bwrap: the runner must refuse, not run scripts unconfined.
    let out = bin().env("PATH", "/nonexistent").arg("--config").arg(&config).arg("runner").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bubblewrap") && err.contains("runner.isolation"), "{err}");
}

#[test]
fn a_job_that_keeps_killing_runners_is_set_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let data = tmp.path().join("data");
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
             [runner]\njobs = 1\ncapabilities = [\"x86_64\"]\nmax_attempts = 2\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"deadly\"\nscript = \"sleep 60\"\narches = [\"x86_64\"]\ntime_limit_secs = 120\n",
            data.display(),
            free_port(),
            repo.display()
        ),
    )
    .unwrap();
    // Every process logs into a file, for the failure message.
    let log = |name: &str| std::fs::File::create(tmp.path().join(format!("{name}.log"))).unwrap();
    let logs = || -> String {
        ["serve", "runner-1", "runner-2", "runner-3"]
            .iter()
            .map(|n| format!("--- {n}:\n{}", std::fs::read_to_string(tmp.path().join(format!("{n}.log"))).unwrap_or_default()))
            .collect()
    };
    let _serve = Serve(
        bin().arg("--config").arg(&config).args(["serve", "--no-runner"]).stdout(Stdio::null()).stderr(log("serve")).spawn().unwrap(),
    );
    post(&repo, &config, "fatal", "main", &[("README", "changed\n")]);
    let db = data.join("patchbay.sqlite3");
    let deadly_starts = || started_by(&db).into_iter().filter(|(j, _)| j.contains("-deadly-")).count();
    // Each time the job starts, its runner dies (as if the job took the machine down).
    for round in 1..=2 {
        let mut runner = Serve(
            bin().arg("--config").arg(&config).arg("runner").stdout(Stdio::null()).stderr(log(&format!("runner-{round}"))).spawn().unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(180);
        while deadly_starts() < round {
            assert!(Instant::now() < deadline, "attempt {round} never started\n{}", logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", &runner.0.id().to_string()]).status();
        let _ = runner.0.wait();
    }
    // The next runner does not run it a third time: it reports it and sets it aside.
    let _runner = Serve(bin().arg("--config").arg(&config).arg("runner").stdout(Stdio::null()).stderr(log("runner-3")).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let done: Vec<_> = results(&db).into_iter().filter(|r| r["test"] == "deadly").collect();
        if !done.is_empty() || Instant::now() > deadline {
            break done;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done.len(), 1, "{done:#?}\n{}", logs());
    assert_eq!(done[0]["outcome"], "ERROR");
    assert!(done[0]["reason"].as_str().unwrap().contains("delivered 3 times"), "{:#}", done[0]);
    assert_eq!(deadly_starts(), 2, "not started a third time");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let reason: String = conn.query_row("SELECT reason FROM bus_dead_letters ORDER BY pos DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(reason.contains("keeps stopping runners"), "dead-lettered with the reason: {reason}");
}

#[test]
fn a_runner_waits_for_an_unreachable_broker_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("patchbay.toml");
    let port = free_port();
    std::fs::write(&config, format!("data_dir = \"data\"\n[bus]\nbackend = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\n"))
        .unwrap();
    let log = tmp.path().join("runner.log");
    let mut runner = Serve(
        bin()
            .arg("--config")
            .arg(&config)
            .arg("runner")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // Said by the RabbitMQ bus's own connect loop, or by the runner's around it.
        if text.contains("Cannot reach RabbitMQ; retrying") || text.contains("Cannot reach the bus; retrying") {
            std::thread::sleep(Duration::from_millis(300));
            assert!(runner.0.try_wait().unwrap().is_none(), "still running, still trying: {text}");
            break;
        }
        assert!(runner.0.try_wait().unwrap().is_none(), "the runner gave up instead of retrying: {text}");
        assert!(Instant::now() < deadline, "no retry reported: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn only_failures_are_mailed_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("test.sh", "grep -q ok status\n"), ("status", "ok\n")]);
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
             [report]\nonly_on_failure = true\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"status\"\nscript = \"sh test.sh\"\narches = [\"x86_64\"]\n",
            free_port(),
            repo.display()
        ),
    )
    .unwrap();
    let _serve = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    post(&repo, &config, "fine", "main", &[("README", "docs\n")]);
    post(&repo, &config, "bad", "main", &[("status", "failing\n")]);
    let db = tmp.path().join("data/patchbay.sqlite3");
    let states: Vec<String> = settled_reports(&db, None, 2, 60).into_iter().map(|(_, state)| state).collect();
    assert_eq!(states, vec!["skipped".to_string(), "sent".to_string()]);
    let mails = std::fs::read_dir(tmp.path().join("data/outbox/new")).unwrap().count();
    assert_eq!(mails, 1, "only the failure is mailed");
}

/// `[project.report] mode`: "submitter" mails the submitter alone, never the list; "none" mails
/// no one, and the verdict is still decided, published and recorded, the report `skipped`.
#[test]
fn a_project_chooses_who_hears_of_its_verdicts() {
    for mode in ["submitter", "none"] {
        let tmp = tempfile::tempdir().unwrap();
        let repo = origin(tmp.path(), &[("test.sh", "grep -q ok status\n"), ("status", "ok\n")]);
        let config = tmp.path().join("patchbay.toml");
        let port = free_port();
        std::fs::write(
            &config,
            format!(
                "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
                 [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\nlist_address = \"demo@{LIST}\"\n\
                 [project.report]\nmode = \"{mode}\"\n\
                 [[project.test]]\nname = \"status\"\nscript = \"sh test.sh\"\narches = [\"x86_64\"]\n",
                port,
                repo.display()
            ),
        )
        .unwrap();
        let _serve = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        std::thread::sleep(Duration::from_millis(500));
        post(&repo, &config, "bad", "main", &[("status", "failing\n")]);
        let db = tmp.path().join("data/patchbay.sqlite3");
        let states = settled_reports(&db, None, 1, 60);
        let verdicts = topic_bodies(&db, "e2e.ci.ci.series.verdict");
        assert_eq!(verdicts.len(), 1, "{mode}: the verdict is decided and published whoever hears of it");
        assert_eq!(verdicts[0]["verdict"], "FAILED");
        let mails = outbox(tmp.path());
        if mode == "none" {
            assert_eq!(states, vec![(1, "skipped".to_string())]);
            assert!(mails.is_empty(), "no mail at all: {mails:?}");
            let why: String = rusqlite::Connection::open(&db).unwrap().query_row("SELECT detail FROM reports", [], |r| r.get(0)).unwrap();
            assert!(why.contains("report.mode = \"none\""), "{why}");
            // Everything but the mail as before: the dashboard shows the verdict and its report's state.
            let page = http_get(port, &format!("/series/{}", verdicts[0]["series"]["id"]));
            assert!(page.contains("FAILED") && page.contains("skipped"), "{page}");
        } else {
            assert_eq!(states, vec![(1, "sent".to_string())]);
            assert_eq!(mails.len(), 1);
            let headers = &mails[0][..mails[0].find("\n\n").unwrap()];
            assert!(headers.lines().any(|l| l.starts_with("To: ") && !l.contains(LIST)), "{headers}");
            assert!(!headers.lines().any(|l| l.starts_with("Cc:")), "never the list: {headers}");
        }
    }
}

/// The reports (version, state) in series order, once `n` of them have left `intent` (or after
/// `secs`): of the series named `name`, or all.
fn settled_reports(db: &Path, name: Option<&str>, n: usize, secs: u64) -> Vec<(u32, String)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let states: Vec<(u32, String)> = rusqlite::Connection::open(db)
            .ok()
            .and_then(|c| {
                let mut s = c
                    .prepare(
                        "SELECT r.version, r.state FROM reports r JOIN series s ON s.uid = r.series_id
                         WHERE ?1 IS NULL OR s.name = ?1 ORDER BY s.id, r.version",
                    )
                    .ok()?;
                Some(s.query_map([name], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect())
            })
            .unwrap_or_default();
        if states.len() == n && states.iter().all(|(_, s)| s != "intent" && s != "sending") || Instant::now() > deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A config with one job slot and a test `slow` running `script`, and `serve` on it.
fn one_slot_serve(tmp: &Path, repo: &Path, script: &str) -> (PathBuf, Serve) {
    let (config, _, serve) = one_slot_serve_with(tmp, repo, script, "");
    (config, serve)
}

/// [`one_slot_serve`] with `extra` top-level config sections; also returns the HTTP port.
fn one_slot_serve_with(tmp: &Path, repo: &Path, script: &str, extra: &str) -> (PathBuf, u16, Serve) {
    serve_one_test(tmp, repo, "slow", script, "", extra)
}

/// `serve` with one job slot, project `demo` and one test `test` running `script` (a TOML
/// literal string: no `'` in it), with `test_extra` lines in the test's table and
/// `runner_extra` after `[runner]` (more keys, or sections of their own); also the HTTP port.
fn serve_one_test(tmp: &Path, repo: &Path, test: &str, script: &str, test_extra: &str, runner_extra: &str) -> (PathBuf, u16, Serve) {
    serve_one_test_in(tmp, repo, test, script, test_extra, runner_extra, "")
}

/// [`serve_one_test`] with `project_extra` lines in project `demo`'s table.
fn serve_one_test_in(
    tmp: &Path,
    repo: &Path,
    test: &str,
    script: &str,
    test_extra: &str,
    runner_extra: &str,
    project_extra: &str,
) -> (PathBuf, u16, Serve) {
    let config = tmp.join("patchbay.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
             [runner]\njobs = 1\n{runner_extra}\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n{project_extra}\n\
             [[project.test]]\nname = \"{test}\"\nscript = '{script}'\narches = [\"{}\"]\n{test_extra}\n",
            repo.display(),
            std::env::consts::ARCH
        ),
    )
    .unwrap();
    let serve = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    (config, port, serve)
}

/// Applies `mails` (a series' patches, cover letter left out) to `repo`'s main as its
/// maintainer would: new commits, the same changes.
fn maintainer_applies(repo: &Path, mails: &[String]) {
    let mut am = Command::new("git")
        .current_dir(repo)
        .args(["am", "-q"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_COMMITTER_NAME", "Maintainer")
        .env("GIT_COMMITTER_EMAIL", "maint@example.org")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    am.stdin.take().unwrap().write_all(mails.concat().as_bytes()).unwrap();
    assert!(am.wait().unwrap().success());
}

/// A post-receive hook need not wait for the schedule: `patchbay publish` on
/// `git.branch.updated` starts a round at once (the schedule here is an hour).
#[test]
fn a_push_announced_by_a_hook_is_followed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let (config, _, _serve) = one_slot_serve_with(tmp.path(), &repo, "true", "[merged]\ninterval_secs = 3600");
    let mails = series_mails(&repo, "hooked", &[("README", "hooked\n")], None);
    inject_all(&config, &mails);
    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, Some("the hooked series"), 1, 120), vec![(1, "sent".to_string())]);
    maintainer_applies(&repo, &mails[1..]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(topic_bodies(&db, "e2e.ci.series.series.merged").is_empty(), "without the hook, the next round is an hour away");
    let hook = bin()
        .arg("--config")
        .arg(&config)
        .args(["publish", "--topic", "git.branch.updated", "--json", r#"{"ref": "refs/heads/main"}"#])
        .output()
        .unwrap();
    assert!(hook.status.success(), "{}", String::from_utf8_lossy(&hook.stderr));
    let merged = wait_for_body(&db, "e2e.ci.series.series.merged", 20, |b| b["series"]["name"] == "the hooked series");
    assert_eq!(merged["branch"], "main");
}

/// Issue 17: the project's branch is followed (`merged.interval_secs = 1`). A series tested and
/// reported, then applied upstream, becomes `merged` within a round or two; a series applied
/// upstream while its jobs still wait for the one slot has them set aside, saying why.
#[test]
fn series_merged_upstream_are_noticed_and_their_waiting_jobs_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n"), ("OTHER", "x\n")]);
    // The blocker (it changes OTHER) holds the one slot for 20 s: the window in which the work
    // series waits, is applied upstream, and must be noticed.
    let (config, http, _serve) =
        one_slot_serve_with(tmp.path(), &repo, "if grep -q y OTHER; then sleep 20; else sleep 1; fi", "[merged]\ninterval_secs = 1");
    let db = tmp.path().join("data/patchbay.sqlite3");
    let merged_topic = "e2e.ci.series.series.merged";

    // Tested and reported first, merged afterwards.
    let first = series_mails(&repo, "first", &[("README", "first\n")], None);
    inject_all(&config, &first);
    assert_eq!(settled_reports(&db, Some("the first series"), 1, 120), vec![(1, "sent".to_string())]);
    assert!(topic_bodies(&db, merged_topic).is_empty(), "nothing is merged before the maintainer applies it");
    maintainer_applies(&repo, &first[1..]);
    let applied = Instant::now();
    let upstream = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let merged = wait_for_body(&db, merged_topic, 30, |b| b["series"]["name"] == "the first series");
    eprintln!("merged noticed {:?} after the maintainer applied it (merged.interval_secs = 1)", applied.elapsed());
    assert_eq!(merged["branch"], "main");
    assert_eq!(merged["commits"], serde_json::json!([upstream]), "{merged}");
    let id = merged["series"]["id"].as_i64().unwrap();
    let api = http_get(http, &format!("/api/v1/series/{id}"));
    assert!(api.contains("\"state\":\"merged\""), "the API shows it merged: {api}");
    let listed = http_get(http, "/api/v1/series?state=merged");
    assert!(listed.contains("the first series") && listed.contains("\"total\":1"), "{listed}");

    // Merged while its jobs wait: they are set aside.
    let blocker = series_mails(&repo, "blocker", &[("OTHER", "y\n")], None);
    inject_all(&config, &blocker);
    let deadline = Instant::now() + Duration::from_secs(60);
    // The first series' slow job started long ago: wait for the blocker's, the second one.
    while started_by(&db).iter().filter(|(job, _)| job.contains("-slow-")).count() < 2 {
        assert!(Instant::now() < deadline, "the blocker's test never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let work = series_mails(&repo, "work", &[("README", "work\n")], None);
    inject_all(&config, &work);
    maintainer_applies(&repo, &work[1..]);
    wait_for_body(&db, merged_topic, 15, |b| b["series"]["name"] == "the work series");
    let cancelled = wait_for_bodies(&db, "e2e.ci.ci.test.cancelled", 2, 60);
    let work_cancelled: Vec<_> = cancelled.iter().filter(|c| c["series"]["name"] == "the work series").collect();
    assert_eq!(work_cancelled.len(), 2, "its apply and slow jobs: {cancelled:#?}");
    assert!(
        work_cancelled.iter().all(|c| c["reason"].as_str().is_some_and(|r| r.starts_with("merged upstream in main"))),
        "{cancelled:#?}"
    );
    let ids: Vec<&str> = work_cancelled.iter().map(|c| c["job"].as_str().unwrap()).collect();
    assert!(started_by(&db).iter().all(|(job, _)| !ids.contains(&job.as_str())), "no job of the merged series ever started");
}

/// Posts v2 of the `work` series (README "two"), in reply to v1's cover letter.
fn post_v2(repo: &Path, config: &Path, v1_cover: &str) {
    git(repo, &["checkout", "-q", "-b", "work2", "main"]);
    std::fs::write(repo.join("README"), "two\n").unwrap();
    git(repo, &["commit", "-q", "-am", "work: part 1"]);
    let out = repo.join("out-v2");
    let reply = format!("--in-reply-to={v1_cover}");
    git(repo, &["format-patch", "-q", "-v2", "--cover-letter", "--thread=shallow", &reply, "-o", &out.to_string_lossy(), "main..work2"]);
    git(repo, &["checkout", "-q", "main"]);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        let mail = std::fs::read_to_string(&f).unwrap().replace("*** SUBJECT HERE ***", "the work series").replace("<cover.", "<cover-v2.");
        inject(config, mail.as_bytes());
    }
}

#[test]
fn a_superseded_versions_pending_jobs_are_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n"), ("OTHER", "x\n")]);
    // Only the blocker (which changes OTHER) is slow: its 12 s are the window in which v1 and
    // v2 must be posted, which takes several `inject` processes on a loaded machine.
    let (config, _serve) = one_slot_serve(tmp.path(), &repo, "if grep -q y OTHER; then sleep 12; else sleep 1; fi");
    // The one slot is busy with another series while v1 and then v2 arrive: v1's jobs wait.
    post(&repo, &config, "blocker", "main", &[("OTHER", "y\n")]);
    let db = tmp.path().join("data/patchbay.sqlite3");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started_by(&db).iter().any(|(job, _)| job.contains("-slow-")) {
        assert!(Instant::now() < deadline, "the blocker's test never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v1_cover = post_with(&repo, &config, "work", "main", &[("README", "one\n")], "");
    post_v2(&repo, &config, &v1_cover);
    let deadline = Instant::now() + Duration::from_secs(60);
    let versions = |what: &[serde_json::Value], name: &str| -> Vec<u64> {
        let mut v: Vec<u64> = what
            .iter()
            .filter(|b| b["series"]["name"] == format!("the {name} series"))
            .map(|b| b["series"]["version"].as_u64().unwrap())
            .collect();
        v.sort();
        v
    };
    loop {
        let finished = versions(&results(&db), "work");
        if finished == [2, 2] {
            break;
        }
        assert!(Instant::now() < deadline, "v2's results: {finished:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // v1's jobs sit in two queues that share the one slot: one may be set aside after v2 ran.
    let deadline = Instant::now() + Duration::from_secs(30);
    let cancelled = loop {
        let cancelled = topic_bodies(&db, "e2e.ci.ci.test.cancelled");
        if versions(&cancelled, "work").len() >= 2 || Instant::now() > deadline {
            break cancelled;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(versions(&cancelled, "work"), [1, 1], "both of v1's jobs set aside: {cancelled:?}; started: {:?}", started_by(&db));
    assert!(cancelled.iter().all(|c| c["reason"] == "superseded by v2"), "{cancelled:?}");
    let v1_jobs: Vec<String> = cancelled.iter().map(|c| c["job"].as_str().unwrap().to_string()).collect();
    assert!(started_by(&db).iter().all(|(job, _)| !v1_jobs.contains(job)), "no job of v1 ever started");
    // v1 still gets its one verdict (INCOMPLETE, at supersession), and no mail.
    let verdicts = topic_bodies(&db, "e2e.ci.ci.series.verdict");
    let v1: Vec<_> = verdicts.iter().filter(|v| v["series"]["name"] == "the work series" && v["series"]["version"] == 1).collect();
    assert_eq!(v1.len(), 1, "{verdicts:?}");
    assert_eq!(v1[0]["verdict"], "INCOMPLETE");
    let states = settled_reports(&db, Some("the work series"), 2, 30);
    assert_eq!(states, vec![(1, "skipped".to_string()), (2, "sent".to_string())]);
}

#[test]
fn a_version_superseded_before_its_report_gets_none() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let (config, _serve) = one_slot_serve(tmp.path(), &repo, "sleep 2");
    // v1, then at once a v2 in reply to it: v1 is superseded while its tests still run.
    let v1_cover = post_with(&repo, &config, "work", "main", &[("README", "one\n")], "");
    post_v2(&repo, &config, &v1_cover);
    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 2, 60), vec![(1, "skipped".to_string()), (2, "sent".to_string())]);
    let mails = std::fs::read_dir(tmp.path().join("data/outbox/new")).unwrap().count();
    assert_eq!(mails, 1, "only v2 is mailed");
}

#[test]
fn jobs_wait_for_a_runner_that_comes_later() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let data = tmp.path().join("data");
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
             [runner]\ncapabilities = [\"x86_64\"]\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"late\"\nscript = \"true\"\narches = [\"x86_64\"]\n",
            data.display(),
            free_port(),
            repo.display()
        ),
    )
    .unwrap();
    // Delivered by the MTA before `serve` ever ran on this data directory: it waits for the
    // dispatcher's first start instead of being routed to no queue.
    post(&repo, &config, "first", "main", &[("README", "first\n")]);
    let _serve = Serve(
        bin().arg("--config").arg(&config).args(["serve", "--no-runner"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    );
    std::thread::sleep(Duration::from_millis(700));
    // Posted and dispatched while no runner exists at all.
    post(&repo, &config, "early", "main", &[("README", "changed\n")]);
    std::thread::sleep(Duration::from_secs(1));
    let db = data.join("patchbay.sqlite3");
    assert!(results(&db).is_empty());
    let _runner = Serve(bin().arg("--config").arg(&config).arg("runner").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while results(&db).len() < 4 {
        assert!(Instant::now() < deadline, "the queued jobs were not run: {:#?}", results(&db));
        std::thread::sleep(Duration::from_millis(100));
    }
    for name in ["first", "early"] {
        let all = results(&db);
        assert!(find(&all, name, "apply").is_some() && find(&all, name, "late").is_some(), "{name}: {all:#?}");
    }
}

/// A patch in Latin-1 (8-bit, not UTF-8), as older projects still post: its exact bytes reach
/// `git am`, so it applies.
#[test]
fn an_8bit_latin1_patch_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    std::fs::write(repo.join("names.txt"), b"caf\xe9\n").unwrap();
    git(&repo, &["add", "names.txt"]);
    git(&repo, &["commit", "-q", "-m", "names: a Latin-1 file"]);
    let (config, _serve) = one_slot_serve(tmp.path(), &repo, "grep -q cr names.txt");
    git(&repo, &["checkout", "-q", "-b", "latin", "main"]);
    std::fs::write(repo.join("names.txt"), b"caf\xe9\ncr\xe8me\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "names: add cr\u{e8}me"]);
    let out = repo.join("out-latin");
    git(&repo, &["format-patch", "-q", "--cover-letter", "--thread=shallow", "-o", &out.to_string_lossy(), "main..latin"]);
    git(&repo, &["checkout", "-q", "main"]);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        let raw = std::fs::read(&f).unwrap();
        assert!(f.to_string_lossy().contains("cover") || std::str::from_utf8(&raw).is_err(), "the patch mail is not UTF-8");
        // The subject placeholder is ASCII: replace it in the bytes.
        let text = raw
            .windows(b"*** SUBJECT HERE ***".len())
            .position(|w| w == b"*** SUBJECT HERE ***")
            .map(|at| [&raw[..at], b"the latin series", &raw[at + b"*** SUBJECT HERE ***".len()..]].concat())
            .unwrap_or(raw);
        inject(&config, &text);
    }
    let db = tmp.path().join("data/patchbay.sqlite3");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = results(&db);
        if let (Some(apply), Some(test)) = (find(&all, "latin", "apply"), find(&all, "latin", "slow")) {
            assert_eq!(apply["outcome"], "PASSED", "{apply}");
            assert_eq!(test["outcome"], "PASSED", "{test}");
            break;
        }
        assert!(Instant::now() < deadline, "no results: {all:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `serve` on RabbitMQ (a namespace of its own on the broker) with one project whose test
/// `name` runs `script`, plus `extra` config; waits until it answers HTTP, which means the
/// relay has taken its place in the log: what comes next is new. Returns the config and port.
fn serve_on_rabbitmq(tmp: &Path, repo: &Path, ns: &str, jobs: u32, test: (&str, &str), extra: &str) -> (PathBuf, u16, Serve) {
    let url = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let config = tmp.join("patchbay.toml");
    let http = free_port();
    let (name, script) = test;
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[ingest]\nlmtp_listen = \"\"\n\
             [bus]\nbackend = \"amqp\"\nurl = \"{url}\"\nexchange = \"{ns}\"\nprefix = \"e2e\"\nenv = \"{ns}\"\n[identity]\ninstance = \"{ns}\"\n\
             {extra}[runner]\njobs = {jobs}\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"{name}\"\nscript = \"{script}\"\narches = [\"{}\"]\ntime_limit_secs = 60\n",
            repo.display(),
            std::env::consts::ARCH
        ),
    )
    .unwrap();
    let serve = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    wait_healthy(http);
    (config, http, serve)
}

/// Waits (up to a minute) until the `serve` on HTTP port `http` answers `/healthz`.
fn wait_healthy(http: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(http, "/healthz").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "serve on RabbitMQ did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A namespace of its own on the shared broker: exchange, topic env and instance.
fn broker_ns(tag: &str) -> String {
    format!("{tag}{}x{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis())
}

/// Issue 15: a second `serve` keeping its own store on the same RabbitMQ namespace would give
/// the same series other ids and corrupt jobs, verdicts and reports: it refuses to start,
/// naming the first one and saying what to do. Once the first is gone, it starts.
#[test]
fn a_second_serve_on_one_namespace_refuses_to_start() {
    let (tmp, tmp2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let ns = broker_ns("claim");
    let (config, _, first) = serve_on_rabbitmq(tmp.path(), &repo, &ns, 1, ("t", "true"), "");
    // The same namespace, another data directory (another store), another HTTP port.
    let second_config = tmp2.path().join("patchbay.toml");
    let http2 = free_port();
    let text = std::fs::read_to_string(&config).unwrap();
    let listen = text.lines().find(|l| l.starts_with("listen = ")).unwrap().to_string();
    std::fs::write(&second_config, text.replace(&listen, &format!("listen = \"127.0.0.1:{http2}\""))).unwrap();
    let mut second = bin().arg("--config").arg(&second_config).arg("serve").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second serve is still running: it must refuse the namespace");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("another serve already keeps its own store for this RabbitMQ namespace"), "{err}");
    assert!(
        err.contains(&format!("instance {ns}")) && err.contains(&tmp.path().join("data").display().to_string()),
        "names the first: {err}"
    );
    assert!(err.contains("patchbay runner") && err.contains("bus.prefix or bus.env"), "says what to do: {err}");
    assert!(!tmp2.path().join("data/patchbay.sqlite3").exists(), "it refused before opening a store of its own");

    // The first one gone (killed), the claim goes with its connection.
    drop(first);
    let _second =
        Serve(bin().arg("--config").arg(&second_config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(http2, "/healthz").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the second serve did not start after the first stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The same pipeline in the scale-out shape: `serve` on RabbitMQ. The mails go in with
/// `inject` (another process, writing the store in the data directory), so the series events
/// reach the dispatcher on RabbitMQ only through the relay, and the verdict reaches the
/// reporter on RabbitMQ only through the relay too; the report in the outbox shows both hops.
/// Everything on the broker is this test's own (exchange, topics, queue names), so it can
/// share a broker with other runs.
#[test]
fn a_series_is_tested_and_reported_on_rabbitmq() {
    let ns = broker_ns("ci");
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n"), ("test.sh", "set -e\ngrep -q fixed README\necho TESTS PASSED\n")]);
    let (config, _http, _serve) = serve_on_rabbitmq(tmp.path(), &repo, &ns, 2, ("check", "sh test.sh"), "");
    post(&repo, &config, "fix", "main", &[("README", "fixed\n")]);

    let db = tmp.path().join("data/patchbay.sqlite3");
    let reports = settled_reports(&db, Some("the fix series"), 1, 120);
    assert_eq!(reports, vec![(1, "sent".to_string())], "one report, sent to the outbox");
    let outbox: Vec<String> = std::fs::read_dir(tmp.path().join("data/outbox/new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(outbox.len(), 1, "{outbox:#?}");
    assert!(outbox[0].contains("\nX-Patchbay-Verdict: PASSED\n"), "{}", outbox[0]);
    assert!(outbox[0].contains("Subject: Re: [PATCH 0/1] the fix series\n"), "{}", outbox[0]);
    // The results went over RabbitMQ: the store's log holds them as the recorder copied them
    // from the broker, published by this instance's runner. The copy is asynchronous: on a
    // loaded machine it may trail the report.
    let finished = wait_for_bodies(&db, &format!("e2e.{ns}.ci.test.finished"), 2, 30);
    assert_eq!(finished.len(), 2, "apply and check: {finished:#?}");
}

/// Raw HTTP with any headers, as a browser or an attacker would send it; returns the status.
fn http_raw(port: u16, path: &str, headers: &str, body: &str) -> (u16, String) {
    http_method("POST", port, path, headers, body)
}

/// Waits for the first message on `topic` whose body satisfies `pick`.
fn wait_for_body(db: &Path, topic: &str, secs: u64, pick: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(b) = topic_bodies(db, topic).into_iter().find(&pick) {
            return b;
        }
        assert!(Instant::now() < deadline, "nothing on {topic} after {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Dead letters of the embedded store: (queue, reason, topic, sender service).
fn dead_letters(db: &Path) -> Vec<(String, String, String, String)> {
    let Ok(conn) = rusqlite::Connection::open(db) else { return vec![] };
    let mut stmt = conn
        .prepare(
            "SELECT q.name, dl.reason, m.wire FROM bus_dead_letters dl JOIN bus_queues q ON q.id = dl.queue_id
             JOIN bus_messages m ON m.pos = dl.pos ORDER BY dl.pos",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?)))
        .unwrap()
        .map(|r| {
            let (q, reason, wire) = r.unwrap();
            let env: serde_json::Value = serde_json::from_slice(&wire).unwrap();
            (q, reason, env["topic"].as_str().unwrap().to_string(), env["sender"]["service"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Nobody forges a result or a job. While a series' real test is still running (it will
/// fail), forged PASSED results and forged jobs arrive: over HTTP from a web page (a
/// `text/plain` POST with a foreign Origin), over HTTP with this host's token but as a shell,
/// and straight into the store as a shell and as the wrong service. HTTP refuses them; what
/// reaches the bus is dead-lettered by its consumers with the reason; the verdict is the real
/// FAILED, and the forged job never runs. Before authority over topics, the first forgery
/// alone decided PASSED.
#[test]
fn forged_results_and_jobs_decide_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let (config, _serve) = one_slot_serve(tmp.path(), &repo, "sleep 8; grep -q fixed README");
    let text = std::fs::read_to_string(&config).unwrap();
    let port: u16 = text.split("127.0.0.1:").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(port, "/healthz").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    post(&repo, &config, "fix", "main", &[("README", "broken\n")]);
    let db = tmp.path().join("data/patchbay.sqlite3");
    let arch = std::env::consts::ARCH;
    // A valid PASSED for the slow test, made from the real apply result; a job from the real one.
    let mut finished = wait_for_body(&db, "e2e.ci.ci.test.finished", 60, |b| b["test"] == "apply");
    let job = wait_for_body(&db, &format!("e2e.ci.ci.job.slow.{arch}.queued"), 10, |_| true);
    finished["test"] = "slow".into();
    finished["arch"] = arch.into();
    finished["job"] = job["job"].clone();
    finished["outcome"] = "PASSED".into();
    let mut forged_job = job.clone();
    forged_job["job"] = format!("{}-forged", job["job"].as_str().unwrap()).into();
    forged_job["script"] = "echo FORGED-JOB-RAN".into();
    let result_req = serde_json::json!({"topic": "ci.test.finished", "service": "shell", "body": finished}).to_string();
    let job_req = serde_json::json!({"topic": format!("ci.job.slow.{arch}.queued"), "service": "cron", "body": forged_job}).to_string();

    // 1. A web page: text/plain needs no preflight, and the browser adds its Origin.
    let (code, answer) = http_raw(port, "/api/v1/publish", "Content-Type: text/plain\r\nOrigin: http://evil.example\r\n", &result_req);
    assert_eq!(code, 403, "{answer}");
    let (code, answer) = http_raw(port, "/api/v1/publish", "Content-Type: text/plain\r\n", &result_req);
    assert_eq!(code, 403, "no token from this host either: {answer}");
    // 2. This host's own token, as `patchbay publish` sends it, but as a shell: no service's topics.
    let token = std::fs::read_to_string(tmp.path().join("data/publish.token")).unwrap();
    let auth = format!("Authorization: Bearer {}\r\nContent-Type: application/json\r\n", token.trim());
    let (code, answer) = http_raw(port, "/api/v1/publish", &auth, &result_req);
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("only the \\\"runner\\\" service speaks there"), "{answer}");
    let (code, answer) = http_raw(port, "/api/v1/publish", &auth, &job_req);
    assert_eq!(code, 403, "{answer}");
    let as_runner = serde_json::json!({"topic": "ci.test.finished", "service": "RUNNER", "body": finished}).to_string();
    assert_eq!(http_raw(port, "/api/v1/publish", &auth, &as_runner).0, 400, "a service's name in any case");
    let (code, answer) = http_raw(port, "/api/v1/publish", &auth, r#"{"topic": "build.nightly.done", "body": {"ok": true}}"#);
    assert_eq!(code, 200, "a shell's own topics still publish: {answer}");

    // 3. Straight into the store, past HTTP: as a shell, and as a service outside its role.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = patchbay_store::EmbeddedBus::open(&tmp.path().join("data"), patchbay_bus::Sealer::default()).unwrap();
        let out = |service: &str, topic: String, schema: &str, body: &serde_json::Value| patchbay_bus::Outgoing {
            sender: patchbay_model::Sender::new(service, "forger"),
            topic: patchbay_model::Topic::parse(&topic).unwrap(),
            schema: patchbay_model::SchemaRef { name: schema.into(), version: 1 },
            body: body.clone(),
        };
        let job_topic = format!("e2e.ci.ci.job.slow.{arch}.queued");
        patchbay_bus::Bus::publish(
            &bus,
            vec![
                out("shell", "e2e.ci.ci.test.finished".into(), "patchbay.ci.finished", &finished),
                out("dispatcher", "e2e.ci.ci.test.finished".into(), "patchbay.ci.finished", &finished),
                out("runner", job_topic.clone(), "patchbay.ci.job", &forged_job),
                out("shell", job_topic, "patchbay.ci.job", &forged_job),
            ],
        )
        .await
        .unwrap();
    });

    // The real result decides: FAILED, one verdict, one report; the forged job never ran.
    let reports = settled_reports(&db, Some("the fix series"), 1, 90);
    assert_eq!(reports, vec![(1, "sent".to_string())]);
    let verdicts = topic_bodies(&db, "e2e.ci.ci.series.verdict");
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    assert_eq!(verdicts[0]["verdict"], "FAILED", "{verdicts:#?}");
    let forged_id = forged_job["job"].as_str().unwrap();
    for topic in ["e2e.ci.ci.test.started", "e2e.ci.ci.test.finished", "e2e.ci.ci.test.log"] {
        assert!(topic_bodies(&db, topic).iter().all(|b| b["job"] != forged_id), "the forged job ran ({topic})");
    }
    // Each forgery that reached the bus is set aside with its reason by whoever consumed it
    // (the runner's slot takes the forged jobs once the real job is done).
    let wanted = [
        ("shell", "ci.test.finished", "only the \"runner\" service speaks there"),
        ("dispatcher", "ci.test.finished", "not a topic of its role"),
        ("runner", ".queued", "not a topic of its role"),
        ("shell", ".queued", "only the \"dispatcher\" service speaks there"),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dead = dead_letters(&db);
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(sender, end, why)| !dead.iter().any(|(_, r, t, s)| s == sender && t.ends_with(end) && r.contains(why)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not dead-lettered with their reason: {missing:?}\nall: {dead:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // An admin sees them, with the reason.
    let shown = bin().arg("--config").arg(&config).args(["dead-letters", "--json", "aggregator"]).output().unwrap();
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&shown.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        lines.iter().any(|l| l["envelope"]["sender"]["service"] == "shell" && l["reason"].as_str().unwrap().contains("only the")),
        "{lines:#?}"
    );
}

/// The same forgeries straight onto RabbitMQ, with `require_signatures` and a valid key of
/// another role (a runner host's key, allowed only the runner's topics): a result as a shell,
/// a job as the runner, a job as the dispatcher, a verdict as the aggregator, plus an unsigned
/// and a tampered result. Every consumer refuses them with the reason (the recorder too, so
/// they are not in the history, the stream or `tail`); the verdict is the real FAILED.
#[test]
fn forgeries_on_rabbitmq_are_dead_lettered_and_kept_out_of_history() {
    let url = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let ns = broker_ns("fg");
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let root = format!("e2e.{ns}");
    // A runner host's key, trusted for the runner's topics only.
    let keys = tmp.path().join("data/keys");
    std::fs::create_dir_all(&keys).unwrap();
    let kg = bin().args(["keygen", "--id", "intruder", "--dir"]).arg(tmp.path().join("intruder")).output().unwrap();
    assert!(kg.status.success(), "{}", String::from_utf8_lossy(&kg.stderr));
    std::fs::copy(tmp.path().join("intruder/intruder.pub"), keys.join("intruder.pub")).unwrap();
    let trust =
        format!("[signing]\nrequire_signatures = true\n[signing.allow]\nintruder = [\"{root}.ci.test.#\", \"{root}.ci.runner.#\"]\n");
    let (config, http, _serve) = serve_on_rabbitmq(tmp.path(), &repo, &ns, 1, ("slow", "sleep 8; grep -q fixed README"), &trust);
    post(&repo, &config, "fix", "main", &[("README", "broken\n")]);
    let db = tmp.path().join("data/patchbay.sqlite3");
    let arch = std::env::consts::ARCH;
    let mut finished = wait_for_body(&db, &format!("{root}.ci.test.finished"), 90, |b| b["test"] == "apply");
    let job = wait_for_body(&db, &format!("{root}.ci.job.slow.{arch}.queued"), 10, |_| true);
    finished["test"] = "slow".into();
    finished["arch"] = arch.into();
    finished["job"] = job["job"].clone();
    let mut failed = finished.clone();
    failed["outcome"] = "FAILED".into();
    failed["reason"] = "failed".into();
    finished["outcome"] = "PASSED".into();
    let mut forged_job = job.clone();
    forged_job["job"] = format!("{}-forged", job["job"].as_str().unwrap()).into();
    forged_job["script"] = "echo FORGED-JOB-RAN".into();
    let verdict = serde_json::json!({"series": finished["series"], "verdict": "PASSED", "failed": [], "missing": []});

    let rt = tokio::runtime::Runtime::new().unwrap();
    let forged: Vec<String> = rt.block_on(async {
        let key = patchbay_bus::SigningKey::read(&tmp.path().join("intruder/intruder.key")).unwrap();
        let mut amqp = patchbay_bus_amqp::AmqpConfig::new(url.clone(), tmp.path().join("forger"));
        amqp.exchange = ns.clone();
        amqp.queue_prefix = format!("{root}.");
        let signed = patchbay_bus::Sealer::new(Some(std::sync::Arc::new(key)));
        let bus = patchbay_bus_amqp::AmqpBus::connect(amqp.clone(), signed.clone()).await.unwrap();
        let unsigned = patchbay_bus_amqp::AmqpBus::connect(amqp, patchbay_bus::Sealer::default()).await.unwrap();
        let out = |service: &str, suffix: String, schema: &str, body: &serde_json::Value| patchbay_bus::Outgoing {
            sender: patchbay_model::Sender::new(service, "forger"),
            topic: patchbay_model::Topic::parse(&format!("{root}.{suffix}")).unwrap(),
            schema: patchbay_model::SchemaRef { name: schema.into(), version: 1 },
            body: body.clone(),
        };
        let job_topic = format!("ci.job.slow.{arch}.queued");
        let mut ids = Vec::new();
        let sent = patchbay_bus::Bus::publish(
            &bus,
            vec![
                out("shell", "ci.test.finished".into(), "patchbay.ci.finished", &finished),
                out("runner", job_topic.clone(), "patchbay.ci.job", &forged_job),
                out("dispatcher", job_topic, "patchbay.ci.job", &forged_job),
                out("aggregator", "ci.series.verdict".into(), "patchbay.ci.verdict", &verdict),
                // The key may publish results, but the aggregator never does.
                out("aggregator", "ci.test.finished".into(), "patchbay.ci.finished", &finished),
            ],
        )
        .await
        .unwrap();
        ids.extend(sent.iter().map(|e| e.id.to_string()));
        let sent = patchbay_bus::Bus::publish(&unsigned, vec![out("runner", "ci.test.finished".into(), "patchbay.ci.finished", &finished)])
            .await
            .unwrap();
        ids.extend(sent.iter().map(|e| e.id.to_string()));
        // Signed as the runner with FAILED, then altered to PASSED on the way.
        let mut tampered = signed.seal(out("runner", "ci.test.finished".into(), "patchbay.ci.finished", &failed), 1_000_000);
        tampered.body = finished.clone();
        ids.push(tampered.id.to_string());
        patchbay_bus::Bus::publish_sealed(&bus, vec![tampered]).await.unwrap();
        ids
    });

    let reports = settled_reports(&db, Some("the fix series"), 1, 120);
    assert_eq!(reports, vec![(1, "sent".to_string())]);
    let verdicts = topic_bodies(&db, &format!("{root}.ci.series.verdict"));
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    assert_eq!(verdicts[0]["verdict"], "FAILED", "{verdicts:#?}");
    let forged_id = forged_job["job"].as_str().unwrap();
    assert!(topic_bodies(&db, &format!("{root}.ci.test.started")).iter().all(|b| b["job"] != forged_id), "the forged job ran");

    // The recorder refused all seven, with their reasons: none is history, stream or tail.
    let reasons: Vec<String> = rt.block_on(async {
        let mut amqp = patchbay_bus_amqp::AmqpConfig::new(url.clone(), tmp.path().join("reader"));
        amqp.exchange = ns.clone();
        amqp.queue_prefix = format!("{root}.");
        let bus = patchbay_bus_amqp::AmqpBus::connect(amqp, patchbay_bus::Sealer::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let dead = patchbay_bus::Bus::dead_letters(&bus, &format!("serve-log.{ns}"), 100).await.unwrap();
            if dead.len() >= 7 || Instant::now() > deadline {
                return dead.into_iter().map(|d| format!("{} {}", d.envelope.id, d.reason)).collect();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    for (id, why) in forged.iter().zip([
        "only the \"runner\" service speaks there",
        "key \"intruder\" may not publish on topic",
        "key \"intruder\" may not publish on topic",
        "key \"intruder\" may not publish on topic",
        "sender \"aggregator\" may not publish",
        "unsigned message",
        "bad signature",
    ]) {
        assert!(reasons.iter().any(|r| r.starts_with(id.as_str()) && r.contains(why)), "{id}: {why}\n{reasons:#?}");
        let stored: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM bus_messages WHERE id = ?1", [id], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0, "{id} ({why}) is in the log behind history, stream and tail");
        assert!(http_get(http, &format!("/api/v1/messages/{id}")).starts_with("HTTP/1.1 404"), "{id} is in the history");
    }
}

/// Delivers one mail with `patchbay inject`, as an MTA pipe would.
fn inject(config: &Path, mail: &[u8]) {
    inject_via(config, LIST, mail);
}

/// [`inject`] as delivered through list `list`.
fn inject_via(config: &Path, list: &str, mail: &[u8]) {
    let mut c = bin().arg("--config").arg(config).args(["inject", "--list-id", list]).stdin(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(mail).unwrap();
    assert!(c.wait().unwrap().success());
}

/// Delivers every mail of `mails` with [`inject`], in order.
fn inject_all(config: &Path, mails: &[String]) {
    for mail in mails {
        inject(config, mail.as_bytes());
    }
}

/// The mails of a series made from `changes` on a branch off main, as `git format-patch` writes
/// them (shallow thread, a cover letter), every `Date:` replaced by `date` when given.
fn series_mails(repo: &Path, name: &str, changes: &[(&str, &str)], date: Option<&str>) -> Vec<String> {
    format_series(repo, name, "main", changes, "", date)
}

#[test]
fn old_mail_is_stored_but_neither_tested_nor_reported_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("hello.c", "int main(void) { return 0; }\n")]);
    let (config, _serve) = one_slot_serve(tmp.path(), &repo, "cc -o hello hello.c");
    let import = |name: &str, mails: &[String], test: bool| {
        let mbox = tmp.path().join(format!("{name}.mbox"));
        std::fs::write(&mbox, mails.concat()).unwrap();
        let mut c = bin();
        c.arg("--config").arg(&config).args(["import", "--quiet", "--list-id", LIST]);
        if test {
            c.arg("--test");
        }
        let out = c.arg(&mbox).output().unwrap();
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    };
    // Posted today, and posted two years ago (delivered late, or imported from an archive).
    for mail in series_mails(&repo, "fresh", &[("a.txt", "a\n")], None) {
        inject(&config, mail.as_bytes());
    }
    for mail in series_mails(&repo, "ancient", &[("b.txt", "b\n")], Some("Tue, 2 Jan 2024 10:00:00 +0000")) {
        inject(&config, mail.as_bytes());
    }
    import("archived", &series_mails(&repo, "archived", &[("c.txt", "c\n")], Some("Wed, 3 Jan 2024 10:00:00 +0000")), false);
    import("wanted", &series_mails(&repo, "wanted", &[("d.txt", "d\n")], Some("Thu, 4 Jan 2024 10:00:00 +0000")), true);

    let db = tmp.path().join("data/patchbay.sqlite3");
    let reports = settled_reports(&db, None, 2, 120);
    let skipped = wait_for_bodies(&db, "e2e.ci.ci.job.skipped", 2, 30);
    let names = |bodies: &[serde_json::Value]| {
        let mut n: Vec<String> = bodies.iter().map(|b| b["series"]["name"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    };
    // Every series is stored and assembled...
    assert_eq!(
        names(&topic_bodies(&db, "e2e.ci.series.series.complete")),
        ["the ancient series", "the archived series", "the fresh series", "the wanted series"]
    );
    // ...the old ones are skipped, saying why...
    assert_eq!(names(&skipped), ["the ancient series", "the archived series"]);
    assert!(skipped[0]["reason"].as_str().unwrap().contains("dispatch.max_age_secs"), "{skipped:#?}");
    // ...and only the fresh one and the one imported with --test get jobs and a report.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("SELECT wire FROM bus_messages WHERE topic LIKE 'e2e.ci.ci.job.%.queued' ORDER BY pos").unwrap();
    let jobs: Vec<serde_json::Value> = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|w| serde_json::from_slice::<serde_json::Value>(&w.unwrap()).unwrap()["body"].clone())
        .collect();
    let mut jobs = names(&jobs);
    jobs.dedup();
    assert_eq!(jobs, ["the fresh series", "the wanted series"]);
    assert_eq!(reports.len(), 2, "{reports:?}");
    let outbox: Vec<String> = std::fs::read_dir(tmp.path().join("data/outbox/new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(outbox.len(), 2);
    assert!(outbox.iter().all(|m| !m.contains("the ancient series") && !m.contains("the archived series")), "{outbox:#?}");
}

/// The bodies on `topic` once there are `n` of them (or after `secs`).
fn wait_for_bodies(db: &Path, topic: &str, n: usize, secs: u64) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let bodies = topic_bodies(db, topic);
        if bodies.len() >= n || Instant::now() > deadline {
            return bodies;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `git` with author and committer dates set to `date` (`@<unix> +0000`), committed by a maintainer.
fn git_at(dir: &Path, date: &str, args: &[&str]) -> String {
    let env = [
        ("GIT_COMMITTER_NAME", "Maintainer"),
        ("GIT_COMMITTER_EMAIL", "maint@example.org"),
        ("GIT_AUTHOR_DATE", date),
        ("GIT_COMMITTER_DATE", date),
    ];
    git_with(dir, args, &env).trim().to_string()
}

/// A project repository whose first commit (`files` on main) is dated 1 January 2024.
fn dated_origin(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let repo = dir.join("origin");
    std::fs::create_dir_all(&repo).unwrap();
    let date = "@1704067200 +0000";
    git_at(&repo, date, &["init", "-q", "-b", "main"]);
    for (name, content) in files {
        std::fs::write(repo.join(name), content).unwrap();
    }
    git_at(&repo, date, &["add", "."]);
    git_at(&repo, date, &["commit", "-q", "-m", "base"]);
    repo
}

/// Imports `mails` as one mbox with `import --test`.
fn import_for_test(tmp: &Path, config: &Path, name: &str, mails: &[String]) {
    let mbox = tmp.join(format!("{name}.mbox"));
    std::fs::write(&mbox, mails.concat()).unwrap();
    let out = bin().arg("--config").arg(config).args(["import", "--quiet", "--test", "--list-id", LIST]).arg(&mbox).output().unwrap();
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
}

/// The mails in the outbox.
fn outbox(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp.join("data/outbox/new"))
        .map(|d| d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn an_archived_series_is_applied_on_the_branch_as_of_its_date() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = dated_origin(tmp.path(), &[("hello.c", "int main(void) { return 0; }\n")]);
    let base = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    // Posted on 4 January 2024 without a base-commit...
    let mails =
        series_mails(&repo, "dated", &[("hello.c", "int main(void) { return 0; } /* v2 */\n")], Some("Thu, 4 Jan 2024 10:00:00 +0000"));
    // ...while the branch moved on later, over the same line: the head no longer takes it.
    std::fs::write(repo.join("hello.c"), "int main(void) { return 1; }\n").unwrap();
    git_at(&repo, "@1704844800 +0000", &["commit", "-q", "-am", "rewrite"]);
    let (config, _serve) = one_slot_serve(tmp.path(), &repo, "cc -o hello hello.c");
    import_for_test(tmp.path(), &config, "dated", &mails);

    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 1, 120).len(), 1);
    let results = results(&db);
    for test in ["apply", "slow"] {
        let r = find(&results, "dated", test).unwrap_or_else(|| panic!("{test}: {results:#?}"));
        assert_eq!(r["outcome"], "PASSED", "{r:#?}");
        assert_eq!(r["base"]["commit"], base.as_str(), "{r:#?}");
        assert_eq!(r["base"]["reason"], "branch main as of 2024-01-04, the series' date: it does not apply at the head", "{r:#?}");
    }
    let mails = outbox(tmp.path());
    assert_eq!(mails.len(), 1);
    let mail = mails[0].replace('\n', " ");
    assert!(
        mail.contains(&format!("Applied to: {base} (branch main as of 2024-01-04, the series' date: it does not apply at the head)")),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("\nTo name the base next time: `git format-patch --base=<commit>`.\n"), "{}", mails[0]);
}

#[test]
fn a_series_already_merged_upstream_is_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("hello.c", "int main(void) { return 0; }\n"), ("README", "base\n")]);
    let mails = series_mails(&repo, "taken", &[("hello.c", "int main(void) { return 0; } /* v2 */\n"), ("README", "taken\n")], None);
    // The maintainer applied it (new commits, the same changes), then later work changed the same line.
    maintainer_applies(&repo, &mails[1..]);
    let merged: Vec<String> = git(&repo, &["log", "--format=%h", "--abbrev=12", "-2"]).lines().rev().map(str::to_string).collect();
    std::fs::write(repo.join("hello.c"), "int main(void) { return 1; }\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "later work"]);
    let (config, _serve) = one_slot_serve(tmp.path(), &repo, "cc -o hello hello.c");
    inject_all(&config, &mails);

    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 1, 120).len(), 1);
    let results = results(&db);
    let apply = find(&results, "taken", "apply").expect("apply result");
    assert_eq!((apply["outcome"].as_str(), apply["reason"].as_str()), (Some("INFO"), Some("already-merged")), "{apply:#?}");
    let verdicts = topic_bodies(&db, "e2e.ci.ci.series.verdict");
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0]["verdict"], "MERGED", "{verdicts:#?}");
    let mails = outbox(tmp.path());
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.contains("\nX-Patchbay-Verdict: MERGED\n") && mail.contains("it is already merged"), "{mail}");
    assert!(mail.contains(&format!("1/2 already merged as {} taken: part 1", merged[0])), "{mail}");
    assert!(mail.contains(&format!("2/2 already merged as {} taken: part 2", merged[1])), "{mail}");
    assert!(!mail.contains("FAILED") && !mail.contains("does not apply"), "{mail}");
}

/// The mails of a series made from `changes` on a branch off `from`, with `format-patch` `args`
/// (a subject prefix, a base), cover letter titled `the <name> series`.
fn tagged_mails(repo: &Path, name: &str, from: &str, changes: &[(&str, &str)], args: &[&str]) -> Vec<String> {
    git(repo, &["checkout", "-q", "-b", name, from]);
    for (i, (file, content)) in changes.iter().enumerate() {
        std::fs::write(repo.join(file), content).unwrap();
        git(repo, &["add", file]);
        git(repo, &["commit", "-q", "-m", &format!("{name}: part {}", i + 1)]);
    }
    let out = repo.join(format!("out-{name}"));
    let mut fp = vec!["format-patch", "-q", "--cover-letter", "--thread=shallow"];
    fp.extend_from_slice(args);
    let (dir, range) = (out.to_string_lossy().to_string(), format!("{from}..{name}"));
    fp.extend_from_slice(&["-o", &dir, &range]);
    git(repo, &fp);
    git(repo, &["checkout", "-q", "main"]);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .replace("*** SUBJECT HERE ***", &format!("the {name} series"))
                .replace("*** BLURB HERE ***", "")
                .replace("<cover.", &format!("<cover-{name}."))
        })
        .collect()
}

#[test]
fn a_tree_map_sends_each_series_to_its_branch_and_reports_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let old = git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    // net-next has a file main lacks; main then changed README.
    git(&repo, &["checkout", "-q", "-b", "next"]);
    std::fs::write(repo.join("NEXT"), "feature\n").unwrap();
    git(&repo, &["add", "NEXT"]);
    git(&repo, &["commit", "-q", "-m", "next: a feature"]);
    git(&repo, &["checkout", "-q", "main"]);
    std::fs::write(repo.join("README"), "main\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "main: docs"]);
    let heads = |b: &str| git(&repo, &["rev-parse", b]).trim().to_string();
    let (main, next) = (heads("main"), heads("next"));
    // Three series: one for each tree by its subject tag, and one naming an old base-commit.
    let for_next = tagged_mails(&repo, "feature", "next", &[("NEXT", "feature, better\n")], &["--subject-prefix=PATCH net-next"]);
    let for_net = tagged_mails(&repo, "fix", "main", &[("README", "main, fixed\n")], &["--subject-prefix=PATCH net"]);
    let base_arg = format!("--base={old}");
    let on_old = tagged_mails(&repo, "old", &old, &[("README", "base, reworded\n")], &["--subject-prefix=PATCH net", &base_arg]);

    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
             [runner]\njobs = 1\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"check\"\nscript = \"cat README\"\narches = [\"{}\"]\n\
             [[project.tree]]\ntags = [\"net\"]\nbranch = \"main\"\n\
             [[project.tree]]\ntags = [\"net-next\"]\nbranch = \"next\"\n",
            free_port(),
            repo.display(),
            std::env::consts::ARCH
        ),
    )
    .unwrap();
    let _serve = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    for mail in for_next.iter().chain(&for_net).chain(&on_old) {
        inject(&config, mail.as_bytes());
    }

    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 3, 180).len(), 3);
    let results = results(&db);
    let expect = [
        ("feature", next.as_str(), "branch next (tree map: subject tag net-next)"),
        ("fix", main.as_str(), "branch main (tree map: subject tag net)"),
        ("old", old.as_str(), "base-commit"),
    ];
    let mails = outbox(tmp.path());
    assert_eq!(mails.len(), 3);
    for (name, commit, reason) in expect {
        for test in ["apply", "check"] {
            let r = find(&results, name, test).unwrap_or_else(|| panic!("{name} {test}: {results:#?}"));
            assert_eq!(r["outcome"], "PASSED", "{r:#?}");
            assert_eq!((r["base"]["commit"].as_str(), r["base"]["reason"].as_str()), (Some(commit), Some(reason)), "{name}");
        }
        let mail = mails.iter().find(|m| m.contains(&format!("the {name} series"))).unwrap();
        assert!(mail.replace('\n', " ").contains(&format!("Applied to: {commit} ({reason})")), "{mail}");
    }
}

/// `serve` reloads its config on SIGHUP and on the admin action: a list added to a project
/// takes effect for the next mail without a restart (that series is tested and reported),
/// a change that needs a restart is named, and a config that does not load leaves the
/// running one in place, saying why.
#[test]
fn the_config_reloads_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let config = tmp.path().join("patchbay.toml");
    let (port, lmtp) = (free_port(), free_port());
    let write = |lists: &str, listen_port: u16| {
        std::fs::write(
            &config,
            format!(
                "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{listen_port}\"\nadmin_tokens = {{ ops = \"0123456789abcdef-ops\" }}\n\
                 [ingest]\nlmtp_listen = \"127.0.0.1:{lmtp}\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
                 [[project]]\nname = \"demo\"\nlist_ids = [{lists}]\nrepository = \"{}\"\n\
                 [[project.test]]\nname = \"check\"\nscript = \"grep -q fixed README\"\narches = [\"{}\"]\n",
                repo.display(),
                std::env::consts::ARCH
            ),
        )
        .unwrap()
    };
    write("\"elsewhere.example.org\"", port);
    let log = std::fs::File::create(tmp.path().join("serve.log")).unwrap();
    let serve = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(log).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(port, "/healthz").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let db = tmp.path().join("data/patchbay.sqlite3");
    let stored = |name: &str| {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM series WHERE name = ?1", [format!("the {name} series")], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    // Before: the list is no project's, so the series is stored but never tested.
    common::lmtp_deliver(lmtp, LIST, &series_mails(&repo, "before", &[("README", "fixed\n")], None));
    assert_eq!(stored("before"), 1, "stored as soon as LMTP said 250");
    std::thread::sleep(Duration::from_secs(2));
    assert!(topic_bodies(&db, "e2e.ci.series.series.complete").is_empty(), "no project claims the list yet");

    // A list added, and the HTTP port changed (that one waits for a restart): SIGHUP.
    write(&format!("\"elsewhere.example.org\", \"{LIST}\""), free_port());
    let hup = |serve: &Serve| assert!(Command::new("kill").args(["-HUP", &serve.0.id().to_string()]).status().unwrap().success());
    hup(&serve);
    let logged = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(tmp.path().join("serve.log")).unwrap();
            if text.contains(what) {
                return text;
            }
            assert!(Instant::now() < deadline, "serve never logged {what:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let text = logged("some changes apply only after a restart");
    assert!(text.contains("projects") && text.contains("http"), "{text}");
    common::lmtp_deliver(lmtp, LIST, &series_mails(&repo, "after", &[("README", "fixed\n")], None));
    let reports = settled_reports(&db, Some("the after series"), 1, 90);
    assert_eq!(reports, vec![(1, "sent".to_string())], "the reloaded project tests and reports the next series");

    // A config that does not load: the running one stays, and the log says why.
    std::fs::write(&config, "[[project]\nname = ").unwrap();
    hup(&serve);
    let text = logged("SIGHUP: config not reloaded.");
    assert!(text.contains("the running config stays"), "{text}");
    common::lmtp_deliver(lmtp, LIST, &series_mails(&repo, "still", &[("README", "fixed\n")], None));
    assert_eq!(settled_reports(&db, Some("the still series"), 1, 90), vec![(1, "sent".to_string())], "the old config still runs");

    // The admin action answers the same in JSON; without a token it is refused.
    write(&format!("\"{LIST}\""), port);
    let refused = http_post(port, "/api/v1/reload", "", None);
    assert!(refused.starts_with("HTTP/1.1 401") || refused.starts_with("HTTP/1.1 403"), "{refused}");
    let answer = http_post(port, "/api/v1/reload", "", Some("0123456789abcdef-ops"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["applied"], serde_json::json!(["projects"]), "{body}");
    assert_eq!(body["needs_restart"], serde_json::json!([]), "the port is the running one again: {body}");
}

/// Issue 15, keys per instance: a runner on another host (its own data directory and
/// instance) and `serve`, both with `require_signatures`, on RabbitMQ. Each signs with the key
/// `keygen` made under its default id, `<host>-<instance>`, so the two ids differ and each
/// `.pub` is copied into the other's trust directory as it is, with no config edited: the job
/// (signed by serve) runs on the other host, its result (signed by the runner) is accepted,
/// and the verdict is issued.
#[test]
fn hosts_sign_with_keys_named_after_them_and_trust_each_other_by_copying_a_file() {
    let url = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let ns = broker_ns("keys");
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let arch = std::env::consts::ARCH;
    let common = |data: &str, instance: &str| {
        format!(
            "data_dir = \"{data}\"\n[ingest]\nlmtp_listen = \"\"\n\
             [bus]\nbackend = \"amqp\"\nurl = \"{url}\"\nexchange = \"{ns}\"\nprefix = \"e2e\"\nenv = \"{ns}\"\n\
             [identity]\ninstance = \"{instance}\"\n[signing]\nrequire_signatures = true\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"remote\"\nscript = \"grep -q fixed README && echo RAN REMOTELY\"\narches = [\"{arch}\"]\ntime_limit_secs = 60\n",
            repo.display()
        )
    };
    let http = free_port();
    let serve_config = tmp.path().join("serve.toml");
    std::fs::write(&serve_config, format!("{}[http]\nlisten = \"127.0.0.1:{http}\"\n", common("serve-data", &format!("{ns}-serve"))))
        .unwrap();
    let runner_config = tmp.path().join("runner.toml");
    std::fs::write(&runner_config, common("runner-data", &format!("{ns}-runner"))).unwrap();

    let mut pubs = Vec::new();
    for config in [&serve_config, &runner_config] {
        let made = bin().arg("--config").arg(config).arg("keygen").output().unwrap();
        let said = String::from_utf8_lossy(&made.stdout).to_string();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        assert!(said.contains("signing.trusted_keys") && said.contains("scp "), "keygen says how to distribute the key: {said}");
        assert!(!said.contains("key = "), "the default id is the one this host signs with: no config edit: {said}");
        let line = said.lines().find(|l| l.starts_with("public key: ")).unwrap();
        pubs.push(std::path::PathBuf::from(line.trim_start_matches("public key: ")));
    }
    let ids: Vec<String> = pubs.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    assert_ne!(ids[0], ids[1], "two instances, two key ids");
    assert!(ids[0].ends_with(&format!("-{ns}-serve")) && ids[1].ends_with(&format!("-{ns}-runner")), "{ids:?}");
    // Distribution: each host's .pub into the other's trust directory, as it is.
    std::fs::copy(&pubs[0], tmp.path().join("runner-data/keys").join(pubs[0].file_name().unwrap())).unwrap();
    std::fs::copy(&pubs[1], tmp.path().join("serve-data/keys").join(pubs[1].file_name().unwrap())).unwrap();
    let check = bin().arg("--config").arg(&serve_config).args(["config", "check", "--json"]).output().unwrap();
    let check: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(check["key_id"], ids[0].as_str());
    assert_eq!(check["trusted_keys"], serde_json::json!(ids.iter().rev().cloned().collect::<std::collections::BTreeSet<_>>()));

    let _serve = Serve(
        bin()
            .arg("--config")
            .arg(&serve_config)
            .args(["serve", "--no-runner"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(http, "/healthz").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _runner =
        Serve(bin().arg("--config").arg(&runner_config).arg("runner").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    post(&repo, &serve_config, "fix", "main", &[("README", "fixed\n")]);

    let db = tmp.path().join("serve-data/patchbay.sqlite3");
    let root = format!("e2e.{ns}");
    let verdict = wait_for_body(&db, &format!("{root}.ci.series.verdict"), 120, |_| true);
    assert_eq!(verdict["verdict"], "PASSED", "{verdict:#}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let signers = |topic: &str| -> Vec<(String, String)> {
        let mut stmt = conn.prepare("SELECT wire FROM bus_messages WHERE topic = ?1").unwrap();
        stmt.query_map([topic], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|w| {
                let env: serde_json::Value = serde_json::from_slice(&w.unwrap()).unwrap();
                (
                    env["body"]["test"].as_str().unwrap_or("").to_string(),
                    env["signature"]["key_id"].as_str().unwrap_or("unsigned").to_string(),
                )
            })
            .collect()
    };
    let finished = signers(&format!("{root}.ci.test.finished"));
    assert!(finished.iter().any(|(t, k)| t == "remote" && *k == ids[1]), "the result is signed by the runner host's key: {finished:?}");
    let jobs = signers(&format!("{root}.ci.job.remote.{arch}.queued"));
    assert!(!jobs.is_empty() && jobs.iter().all(|(_, k)| *k == ids[0]), "jobs are signed by serve's key: {jobs:?}");
}

/// [`serve_one_test`] with the test named `check`.
fn serve_with_test(tmp: &Path, repo: &Path, script: &str, test_extra: &str, runner_extra: &str) -> (PathBuf, u16, Serve) {
    serve_one_test(tmp, repo, "check", script, test_extra, runner_extra)
}

/// `retries`: a failure is run again; a pass on the re-run is PASSED, marked flaky on the
/// result, the verdict and the report, and the verdict waited for it.
#[test]
fn a_test_that_fails_once_then_passes_is_passed_and_flaky() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    // Unconfined, so the script can leave a mark between its runs: the first fails, the next pass.
    let mark = tmp.path().join("ran-once");
    let script = format!("if [ -e {0} ]; then echo fine now; else touch {0}; echo flaked; exit 1; fi", mark.display());
    let (config, _, _serve) = serve_with_test(tmp.path(), &repo, &script, "retries = 2", "isolation = \"none\"");
    post(&repo, &config, "flaky", "main", &[("README", "docs\n")]);
    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 1, 90), vec![(1, "sent".to_string())]);
    let runs: Vec<serde_json::Value> = results(&db).into_iter().filter(|r| r["test"] == "check").collect();
    assert_eq!(runs.len(), 2, "one failure, one re-run: {runs:#?}");
    assert_eq!((runs[0]["outcome"].as_str(), runs[0]["retrying"].as_bool()), (Some("FAILED"), Some(true)));
    assert_eq!((runs[1]["outcome"].as_str(), runs[1].get("retrying")), (Some("PASSED"), None), "the re-run passed and is final");
    let requeued = topic_bodies(&db, &format!("e2e.ci.ci.test.check.{}.requeued", std::env::consts::ARCH));
    assert_eq!(requeued.len(), 1, "one re-run queued");
    assert_eq!((requeued[0]["retry"].as_u64(), requeued[0]["avoid"].as_str()), (Some(1), Some("main")), "{:#?}", requeued[0]);
    let recorded = topic_bodies(&db, "e2e.ci.ci.result.recorded");
    assert!(recorded.iter().any(|r| r["test"] == "check" && r["flaky"] == true), "{recorded:#?}");
    let verdicts = topic_bodies(&db, "e2e.ci.ci.series.verdict");
    assert_eq!(verdicts.len(), 1, "one verdict, after the re-run: {verdicts:#?}");
    assert_eq!(verdicts[0]["verdict"], "PASSED");
    assert_eq!(verdicts[0]["flaky"], serde_json::json!([format!("check/{}", std::env::consts::ARCH)]));
    let mail = outbox(tmp.path()).concat();
    assert!(mail.contains("Flaky (failed, then passed when run again)") && mail.contains("  flaky\n"), "{mail}");
}

/// `baseline`: a failure the base alone shows too is pre-existing; the verdict is PASSED with
/// it listed apart, and the base runs once for two series on the same base.
#[test]
fn a_failure_the_base_has_too_is_pre_existing_and_the_base_runs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n"), ("status", "bad upstream\n")]);
    let (config, _, _serve) = serve_with_test(tmp.path(), &repo, "grep -q ok status", "baseline = true", "");
    post(&repo, &config, "first", "main", &[("README", "first\n")]);
    post(&repo, &config, "second", "main", &[("NOTES", "second\n")]);
    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 2, 120).len(), 2);
    let verdicts = topic_bodies(&db, "e2e.ci.ci.series.verdict");
    assert_eq!(verdicts.len(), 2);
    let label = format!("check/{}", std::env::consts::ARCH);
    for v in &verdicts {
        assert_eq!((v["verdict"].as_str(), &v["pre_existing"]), (Some("PASSED"), &serde_json::json!([label])), "{v:#?}");
    }
    for r in results(&db).iter().filter(|r| r["test"] == "check") {
        assert_eq!((r["outcome"].as_str(), r["pre_existing"].as_bool()), (Some("FAILED"), Some(true)), "{r:#?}");
    }
    let bases = topic_bodies(&db, "e2e.ci.ci.test.baseline");
    assert_eq!(bases.len(), 1, "one base run serves both series: {bases:#?}");
    assert_eq!(bases[0]["fails"], true);
    let mails = outbox(tmp.path());
    assert_eq!(mails.len(), 2);
    for mail in &mails {
        let flat = mail.replace('\n', " ");
        assert!(flat.contains(&format!("Failing on the base alone too, so not counted against this series: {label}.")), "{mail}");
        assert!(mail.contains("pre-existing: the base alone fails too"), "{mail}");
        assert!(!mail.contains("To reproduce: apply the series with `git am -3` on the base above,\nthen"), "nothing to reproduce: {mail}");
    }
}

/// Two runners: a base run one runner made serves the other (`baseline`): after the runner
/// that ran it is gone, a second series on the same base is judged by the first run, not by a
/// second.
#[test]
fn two_runners_share_a_base_run() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n"), ("status", "bad upstream\n")]);
    let data = tmp.path().join("data");
    let arch = std::env::consts::ARCH;
    let common = format!(
        "data_dir = \"{}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
         [runner]\njobs = 2\ncapabilities = [\"{arch}\"]\n\
         [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
         [[project.test]]\nname = \"check\"\nscript = \"grep -q ok status\"\narches = [\"{arch}\"]\nbaseline = true\n",
        data.display(),
        repo.display(),
    );
    let (config, _serve, mut runners) = serve_with_runners(tmp.path(), &common, &["runner-a", "runner-b"]);
    // Both runners hear base runs from the start: their queues exist before any is announced.
    let db = data.join("patchbay.sqlite3");
    let deadline = Instant::now() + Duration::from_secs(60);
    let listening = || -> i64 {
        let Ok(conn) = rusqlite::Connection::open(&db) else { return 0 };
        conn.query_row("SELECT count(*) FROM bus_queues WHERE name LIKE '%runner-baseline.runner-_'", [], |r| r.get(0)).unwrap_or(0)
    };
    while listening() < 2 {
        assert!(Instant::now() < deadline, "the runners' base-run queues never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }

    post(&repo, &config, "first", "main", &[("README", "first\n")]);
    assert_eq!(settled_reports(&db, None, 1, 120).len(), 1);
    let bases = wire_messages(&db, &["e2e.ci.ci.test.baseline"]);
    assert_eq!(bases.len(), 1, "{bases:#?}");
    assert_eq!(bases[0]["body"]["fails"], true);

    // The runner that ran the base goes; the other judges a second series on that base by it.
    let ran = bases[0]["sender"]["instance"].as_str().unwrap().to_string();
    drop(runners.remove(runners.iter().position(|(n, _)| *n == ran).unwrap()));
    post(&repo, &config, "second", "main", &[("NOTES", "second\n")]);
    let runner_logs = || ["runner-a", "runner-b"].map(|n| std::fs::read_to_string(tmp.path().join(format!("{n}.log"))).unwrap()).join("\n");
    assert_eq!(settled_reports(&db, None, 2, 120).len(), 2, "{}", runner_logs());
    assert_eq!(wire_messages(&db, &["e2e.ci.ci.test.baseline"]).len(), 1, "one base run serves both runners: {}", runner_logs());
    let verdicts = topic_bodies(&db, "e2e.ci.ci.series.verdict");
    assert_eq!(verdicts.len(), 2);
    for v in &verdicts {
        assert_eq!((v["verdict"].as_str(), &v["pre_existing"]), (Some("PASSED"), &serde_json::json!([format!("check/{arch}")])), "{v:#?}");
    }
    let checks: Vec<String> = started_by(&db).into_iter().filter(|(j, _)| j.contains("-check-")).map(|(_, w)| w).collect();
    assert_eq!(checks.len(), 2, "each series' check ran once: {checks:?}");
}

/// `retries` with two runners sharing a queue (RabbitMQ): a failure's re-run is offered to the
/// other runner first (the failing one steps aside once, for the retry delay) and passes (flaky).
/// Which runner takes it is a race the other runner usually wins; the test says which did.
#[test]
fn a_failure_is_run_again_on_the_other_runner_on_rabbitmq() {
    let ns = broker_ns("rerun");
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let url = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let arch = std::env::consts::ARCH;
    let mark = tmp.path().join("ran-once");
    let http = free_port();
    let config = |data: &str, instance: &str| {
        let path = tmp.path().join(format!("{instance}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = \"{data}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[ingest]\nlmtp_listen = \"\"\n\
                 [bus]\nbackend = \"amqp\"\nurl = \"{url}\"\nexchange = \"{ns}\"\nprefix = \"e2e\"\nenv = \"{ns}\"\n\
                 [identity]\ninstance = \"{instance}\"\n[runner]\njobs = 1\nisolation = \"none\"\n\
                 [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
                 [[project.test]]\nname = \"flaky\"\nscript = \"if [ -e {1} ]; then echo fine; else touch {1}; exit 1; fi\"\n\
                 arches = [\"{arch}\"]\nretries = 1\n",
                repo.display(),
                mark.display()
            ),
        )
        .unwrap();
        path
    };
    let (main, other) = (config("data", &format!("{ns}-a")), config("data-b", &format!("{ns}-b")));
    let _serve = Serve(bin().arg("--config").arg(&main).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    wait_healthy(http);
    let _runner = Serve(bin().arg("--config").arg(&other).arg("runner").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    std::thread::sleep(Duration::from_secs(1));
    post(&repo, &main, "flaky", "main", &[("README", "docs\n")]);
    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 1, 120), vec![(1, "sent".to_string())]);
    let runs: Vec<String> = started_by_in(&db, &ns).into_iter().filter(|(j, _)| j.contains("-flaky-")).map(|(_, w)| w).collect();
    assert_eq!(runs.len(), 2, "a failure and its re-run: {runs:?}");
    let requeued = topic_bodies(&db, &format!("e2e.{ns}.ci.test.flaky.{arch}.requeued"));
    assert_eq!(requeued.len(), 1, "{requeued:#?}");
    assert_eq!(requeued[0]["avoid"].as_str(), Some(runs[0].as_str()), "offered to another runner than the one that failed");
    eprintln!("the re-run ran on {} (the failure on {})", runs[1], runs[0]);
    let verdicts = topic_bodies(&db, &format!("e2e.{ns}.ci.series.verdict"));
    assert_eq!((verdicts[0]["verdict"].as_str(), &verdicts[0]["flaky"]), (Some("PASSED"), &serde_json::json!([format!("flaky/{arch}")])));
}

/// `per_patch`: the script runs after each patch; a series whose second of three patches breaks
/// it is FAILED, naming patch 2/3, though the third repairs it.
#[test]
fn a_series_broken_in_the_middle_fails_per_patch_naming_the_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n"), ("status", "ok\n")]);
    let (config, _, _serve) = serve_with_test(tmp.path(), &repo, "grep -q ok status", "per_patch = true", "");
    post(&repo, &config, "middle", "main", &[("README", "one\n"), ("status", "bad\n"), ("status", "ok again\n")]);
    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 1, 90), vec![(1, "sent".to_string())]);
    let all = results(&db);
    let r = find(&all, "middle", "check").unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(r["outcome"], "FAILED", "{r:#?}");
    assert_eq!(r["failed_patch"], "2/3 middle: part 2", "{r:#?}");
    assert!(r["excerpt"].as_str().unwrap().contains("[patchbay: passed after patch 1/3 middle: part 1]"), "{r:#?}");
    let verdicts = topic_bodies(&db, "e2e.ci.ci.series.verdict");
    assert_eq!(verdicts[0]["verdict"], "FAILED");
    let mail = outbox(tmp.path()).concat();
    assert!(mail.contains("first failed after patch 2/3 middle: part 2"), "{mail}");
}

/// A reply on the list, as a mail client writes it: `from`, answering `to` (a Message-ID), with `body`.
fn reply(id: &str, from: &str, to: &str, body: &str) -> String {
    format!(
        "From: {from}\nTo: demo@{LIST}\nSubject: Re: [PATCH] the series\nDate: Mon, 7 Dec 2026 10:00:00 +0000\n\
         Message-ID: <{id}@example.org>\nIn-Reply-To: {to}\nReferences: {to}\n\n{body}"
    )
}

/// `Recheck-request:` from the submitter re-runs the named test once, as round 1 with its own
/// verdict and report; the same request again and one from a stranger are refused on the bus
/// only, and change nothing. A maintainer of the project may ask too (round 2), at most
/// `dispatch.max_rechecks` times, for tests the series has; a maintainer of another project,
/// asking through that project's list, may not (permission is the series' own project's).
#[test]
fn a_recheck_request_from_the_submitter_re_runs_the_test_once() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n"), ("status", "ok\n")]);
    let arch = std::env::consts::ARCH;
    let lint = format!("[[project.test]]\nname = \"lint\"\nscript = 'true'\narches = [\"{arch}\"]");
    let other = format!(
        "[dispatch]\nmax_rechecks = 2\n[[project]]\nname = \"other\"\nlist_ids = [\"other.lists.example.org\"]\n\
         repository = \"{}\"\nmaintainers = [\"Mallory <mallory@example.org>\"]\n\
         [[project.test]]\nname = \"check\"\nscript = 'true'\narches = [\"{arch}\"]",
        repo.display()
    );
    let maintainers = "maintainers = [\"Mae <mae@example.org>\"]";
    let (config, port, _serve) = serve_one_test_in(tmp.path(), &repo, "check", "grep -q ok status", &lint, &other, maintainers);
    let cover = post_with(&repo, &config, "again", "main", &[("README", "docs\n")], "please test");
    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 1, 90), vec![(1, "sent".to_string())]);

    inject(
        &config,
        reply("ask-1", "Dev <dev@example.org>", &cover, "Flaky box, please run it again.\n\nRecheck-request: check\n").as_bytes(),
    );
    assert_eq!(settled_reports(&db, None, 2, 90), vec![(1, "sent".to_string()), (1, "sent".to_string())]);
    let accepted = topic_bodies(&db, "e2e.ci.ci.job.recheck.accepted");
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    assert_eq!((&accepted[0]["round"], &accepted[0]["recheck"]), (&serde_json::json!(1), &serde_json::json!([format!("check/{arch}")])));
    let runs: Vec<serde_json::Value> = results(&db).into_iter().filter(|r| r["test"] == "check").collect();
    assert_eq!(runs.len(), 2, "the test ran once more: {runs:#?}");
    assert!(runs[1]["job"].as_str().unwrap().ends_with("-r1") && runs[1]["round"] == 1, "{:#?}", runs[1]);
    assert_eq!(results(&db).iter().filter(|r| r["test"] == "apply").count(), 1, "only the test asked for");
    let verdicts = topic_bodies(&db, "e2e.ci.ci.series.verdict");
    assert_eq!(verdicts.len(), 2);
    assert_eq!((&verdicts[1]["verdict"], &verdicts[1]["round"]), (&serde_json::json!("PASSED"), &serde_json::json!(1)));
    let mails = outbox(tmp.path());
    let retest = mails.iter().find(|m| m.contains("-v1-r1@")).unwrap_or_else(|| panic!("a round-1 report: {mails:#?}"));
    assert!(retest.replace('\n', " ").contains(&format!("Re-tested on request (round 1): check/{arch}.")), "{retest}");

    // A maintainer of the project asks for the other test: round 2.
    inject(&config, reply("ask-m", "Mae <MAE@example.org>", &cover, "Recheck-request: lint\n").as_bytes());
    assert_eq!(settled_reports(&db, None, 3, 90).len(), 3);
    let accepted = topic_bodies(&db, "e2e.ci.ci.job.recheck.accepted");
    assert_eq!(accepted.len(), 2, "{accepted:#?}");
    assert_eq!(accepted[1]["round"], 2, "{accepted:#?}");
    assert_eq!(results(&db).iter().filter(|r| r["test"] == "lint").count(), 2, "lint ran once more");

    // The same request again, a stranger's, a test the series does not have, one too many, and
    // another project's maintainer through that project's list: refused, and nothing else happens.
    inject(&config, reply("ask-2", "Dev <dev@example.org>", &cover, "Recheck-request: check\n").as_bytes());
    inject(&config, reply("ask-3", "Eve <eve@example.org>", &cover, "patchbay: retest\n").as_bytes());
    inject(&config, reply("ask-4", "Mae <mae@example.org>", &cover, "Recheck-request: fuzz\n").as_bytes());
    inject(&config, reply("ask-5", "Mae <mae@example.org>", &cover, "patchbay: retest\n").as_bytes());
    inject_via(
        &config,
        "other.lists.example.org",
        reply("ask-6", "Mallory <mallory@example.org>", &cover, "patchbay: retest\n").as_bytes(),
    );
    let refused = wait_for_bodies(&db, "e2e.ci.ci.job.recheck.refused", 5, 60);
    assert_eq!(refused.len(), 5, "{refused:#?}");
    // Requests are handled side by side: the refusals come in either order.
    let why =
        |mail: &str| refused.iter().find(|r| r["mail"] == mail).map(|r| r["reason"].as_str().unwrap().to_string()).unwrap_or_default();
    assert!(why("<ask-2@example.org>").contains("already re-tested in round 1"), "{refused:#?}");
    assert!(why("<ask-3@example.org>").contains("neither the submitter nor a maintainer"), "{refused:#?}");
    assert!(why("<ask-4@example.org>").contains("unknown test fuzz (this series has: check, lint)"), "{refused:#?}");
    assert!(why("<ask-5@example.org>").contains("at most 2 re-tests per series version"), "{refused:#?}");
    assert!(why("<ask-6@example.org>").contains("mallory@example.org is neither the submitter nor a maintainer of demo"), "{refused:#?}");
    assert!(refused.iter().all(|r| r["series"]["id"] == verdicts[0]["series"]["id"]), "each names its series: {refused:#?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(topic_bodies(&db, "e2e.ci.ci.job.recheck.accepted").len(), 2);
    assert_eq!(topic_bodies(&db, "e2e.ci.ci.series.verdict").len(), 3);
    assert_eq!(outbox(tmp.path()).len(), 3, "a refusal is never mailed");
    // The dashboard shows each request and its answer on the series page.
    let page = http_get(port, &format!("/series/{}", verdicts[0]["series"]["id"]));
    let asked = &page[page.find("Re-tests asked").expect("a re-tests section")..];
    assert!(asked.contains(&format!("round 1: check/{arch}")), "{asked}");
    assert!(asked.contains("already re-tested in round 1") && asked.contains("eve@example.org"), "{asked}");
}

/// A Python that has `module` (`PATCHBAY_TEST_PYTHON`, else python3); `None` (said, and a
/// failure under `CI=true`) when there is none.
fn python_with(module: &str) -> Option<String> {
    let py = std::env::var("PATCHBAY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py).args(["-c", &format!("import {module}")]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{module} is not importable by {py}, and CI=true says this test must run: run scripts/test, which installs it");
    }
    eprintln!("NOTE: {module} is not installed for {py}: this test DID NOT RUN (scripts/test installs it)");
    None
}

/// The Patchwork stand-in (`tests/patchwork/server.py`), validating every request against
/// Patchwork's published schema; stopped when dropped.
struct Patchwork(Child, u16);
impl Drop for Patchwork {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Patchwork {
    fn start(py: &str, tmp: &Path, token: &str) -> Patchwork {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/patchwork");
        let port_file = tmp.join("patchwork.port");
        let child = Command::new(py)
            .arg(dir.join("server.py"))
            .arg(dir.join("patchwork-api-v1.4.yaml"))
            .arg(token)
            .arg(&port_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_file.exists() {
            assert!(Instant::now() < deadline, "the Patchwork stand-in did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
        Patchwork(child, port)
    }

    fn post(&self, path: &str, body: serde_json::Value) {
        let (status, out) = http_raw(self.1, path, "Content-Type: application/json\r\n", &body.to_string());
        assert!((200..300).contains(&status), "{path}: {out}");
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let out = http_get(self.1, path);
        serde_json::from_str(&out[out.find("\r\n\r\n").unwrap() + 4..]).unwrap()
    }
}

/// `[project.patchwork]`: every result reaches Patchwork as a check on every patch of the
/// series, once, through requests the published schema accepts; a Patchwork that is down at
/// first delays them (retried) and loses none; a re-test posts the test's check again.
#[test]
fn results_reach_patchwork_as_checks_on_every_patch_once_and_again_after_a_re_run() {
    let Some(py) = python_with("openapi_core") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let token = "pw-token-0123456789";
    let pw = Patchwork::start(&py, tmp.path(), token);
    pw.post("/_test/down", serde_json::json!({"down": true}));
    let repo = origin(tmp.path(), &[("README", "base\n"), ("status", "ok\n")]);
    let patchwork = format!("[project.patchwork]\nurl = \"http://127.0.0.1:{}\"\ntoken = \"{token}\"\nproject = \"demo\"", pw.1);
    let (config, port, _serve) = serve_with_test(tmp.path(), &repo, "grep -q ok status", &patchwork, "");
    let mails = series_mails(&repo, "checked", &[("README", "one\n"), ("NOTES", "two\n")], None);
    let message_ids: Vec<String> = mails[1..]
        .iter()
        .map(|m| m.lines().find_map(|l| l.strip_prefix("Message-ID: ").or_else(|| l.strip_prefix("Message-Id: "))).unwrap().to_string())
        .collect();
    // Cross-posted: each patch is also in another Patchwork project (ids 1 and 2); the checks
    // belong on the project's own (3 and 4).
    for project in ["other", "demo"] {
        for id in &message_ids {
            pw.post("/_test/patches", serde_json::json!({"msgid": id.trim_start_matches('<').trim_end_matches('>'), "project": project}));
        }
    }
    inject_all(&config, &mails);
    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 1, 90), vec![(1, "sent".to_string())]);
    // Down: the checks wait (retried), then all arrive once it is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pw.get("/_test/requests").as_array().unwrap().iter().filter(|r| r["status"] == 503).count() < 2 {
        assert!(Instant::now() < deadline, "no attempt while Patchwork was down");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pw.get("/_test/checks").as_array().unwrap().is_empty());
    pw.post("/_test/down", serde_json::json!({"down": false}));
    let arch = std::env::consts::ARCH;
    let contexts = ["patchbay-apply-any".to_string(), format!("patchbay-check-{arch}")];
    let wait_checks = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let checks = pw.get("/_test/checks");
            if checks.as_array().unwrap().len() >= n || Instant::now() > deadline {
                return checks.as_array().unwrap().clone();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let checks = wait_checks(4);
    assert_eq!(checks.len(), 4, "two results on two patches: {checks:#?}");
    for patch in [3, 4] {
        for context in &contexts {
            let on: Vec<&serde_json::Value> = checks.iter().filter(|c| c["patch"] == patch && c["context"] == context.as_str()).collect();
            assert_eq!(on.len(), 1, "{context} on patch {patch} once: {checks:#?}");
            assert_eq!(on[0]["state"], "success");
            assert!(on[0]["target_url"].as_str().unwrap().starts_with(&format!("http://127.0.0.1:{port}/logs/")), "{:#?}", on[0]);
        }
    }
    // A re-test of the test: a new result, a new check in the same context on each patch.
    let cover = mails[0].lines().find_map(|l| l.strip_prefix("Message-ID: ").or_else(|| l.strip_prefix("Message-Id: "))).unwrap();
    inject(&config, reply("pw-ask", "Dev <dev@example.org>", cover, "Recheck-request: check\n").as_bytes());
    let checks = wait_checks(6);
    std::thread::sleep(Duration::from_secs(2));
    let checks_now = pw.get("/_test/checks");
    assert_eq!(checks_now.as_array().unwrap().len(), 6, "nothing more: {checks_now:#?}");
    for patch in [3, 4] {
        let again = checks.iter().filter(|c| c["patch"] == patch && c["context"] == contexts[1].as_str()).count();
        assert_eq!(again, 2, "the re-run's check on patch {patch}: {checks:#?}");
    }
    let requests = pw.get("/_test/requests");
    let refused: Vec<&serde_json::Value> = requests
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] != 503 && !(200..300).contains(&r["status"].as_i64().unwrap()))
        .collect();
    assert!(refused.is_empty(), "every request the schema accepts: {refused:#?}");
    let posted = topic_bodies(&db, "e2e.ci.report.check.posted");
    assert_eq!(posted.len(), 6, "each announced once: {posted:#?}");
    // The stand-in refuses what Patchwork's schema refuses, so "none refused" above says something.
    let headers = format!("Authorization: Token {token}\r\nContent-Type: application/json\r\n");
    let (status, answer) =
        http_method("POST", pw.1, "/api/1.4/patches/3/checks/", &headers, r#"{"state": "bogus", "context": "patchbay-x"}"#);
    assert_eq!(status, 400, "a state Patchwork does not have: {answer}");
}

/// `[[notify]]` at once to a webhook whose receiver fails its first three requests: every
/// matching event is delivered, in order per series, each once, signed with the rule's secret.
#[test]
fn a_webhook_rule_delivers_every_event_once_in_order_per_series() {
    let Some(py) = python_with("json") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (receiver, log, hook_port) = start_receiver(&py, tmp.path(), 3);
    let repo = origin(tmp.path(), &[("README", "base\n"), ("status", "ok\n")]);
    let rule = format!(
        "[[notify]]\nname = \"hooked\"\nwebhook = \"http://127.0.0.1:{hook_port}/hook\"\nsecret = \"hook-secret-1234\"\n\
         topics = [\"ci.result.recorded\", \"ci.series.verdict\"]\nproject = \"demo\"\ncadence = \"now\"\n"
    );
    let (config, _, _serve) = serve_with_test(tmp.path(), &repo, "grep -q ok status", "", &format!("\n{rule}"));
    post(&repo, &config, "one", "main", &[("README", "one\n")]);
    post(&repo, &config, "two", "main", &[("status", "bad\n")]);
    let db = tmp.path().join("data/patchbay.sqlite3");
    assert_eq!(settled_reports(&db, None, 2, 90).len(), 2);
    // Published: per series, two results and a verdict.
    let published = wire_messages(&db, &["e2e.ci.ci.result.recorded", "e2e.ci.ci.series.verdict"]);
    assert_eq!(published.len(), 6);
    let deadline = Instant::now() + Duration::from_secs(90);
    let delivered = loop {
        let ok: Vec<serde_json::Value> = received_hooks(&log).into_iter().filter(|r| r["status"] == 200).collect();
        if ok.len() >= 6 || Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(2));
    drop(receiver);
    let all = received_hooks(&log);
    assert_eq!(all.iter().filter(|r| r["status"] == 500).count(), 3, "three refused first: {all:#?}");
    assert!(all.iter().all(|r| r["signed"] == true), "every request signed with the rule's secret");
    assert_eq!(delivered.len(), 6, "each event once: {all:#?}");
    let ids: std::collections::BTreeSet<&str> = delivered.iter().map(|r| r["body"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 6, "no event twice");
    for r in &delivered {
        assert_eq!(r["delivery"], format!("hooked:{}", r["body"]["id"].as_str().unwrap()));
        assert_eq!(r["event"], r["body"]["topic"], "X-Patchbay-Event names the topic");
    }
    // In order per series: as they were published.
    let order = |list: &[serde_json::Value], series: &serde_json::Value| -> Vec<String> {
        list.iter().filter(|e| e["body"]["series"]["id"] == *series).map(|e| e["id"].as_str().unwrap().to_string()).collect()
    };
    let published_sorted = published.clone();
    let bodies: Vec<serde_json::Value> = delivered.iter().map(|r| r["body"].clone()).collect();
    let series: std::collections::BTreeSet<i64> = published.iter().map(|e| e["body"]["series"]["id"].as_i64().unwrap()).collect();
    assert_eq!(series.len(), 2);
    for id in series {
        let id = serde_json::json!(id);
        assert_eq!(order(&bodies, &id), order(&published_sorted, &id), "series {id}");
    }
}

/// Every wire envelope on `topics`, in log order.
fn wire_messages(db: &Path, topics: &[&str]) -> Vec<serde_json::Value> {
    let Ok(conn) = rusqlite::Connection::open(db) else { return vec![] };
    let mut stmt = conn.prepare("SELECT topic, wire FROM bus_messages ORDER BY pos").unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .filter(|(t, _)| topics.contains(&t.as_str()))
        .map(|(_, w)| serde_json::from_slice(&w).unwrap())
        .collect()
}

/// A digest rule with `serve` stopped across the due time: started again, one digest goes out
/// with every matching event, once.
#[test]
fn a_digest_due_while_stopped_goes_out_once_when_back() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = origin(tmp.path(), &[("README", "base\n")]);
    let period = 20;
    let rule =
        format!("\n[[notify]]\nname = \"digest\"\nemail = \"maint@example.org\"\ntopics = [\"demo.event.#\"]\ncadence = \"{period}s\"\n");
    // Start early in a period, so the events are kept and serve stopped before it ends.
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    while now() % period > 2 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (config, _, serve) = serve_with_test(tmp.path(), &repo, "true", "", &rule);
    for (i, word) in ["one", "two", "three"].iter().enumerate() {
        let out = bin()
            .arg("--config")
            .arg(&config)
            .args(["publish", "--json", "--topic", &format!("demo.event.{word}")])
            .arg(format!("{{\"n\": {i}}}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let db = tmp.path().join("data/patchbay.sqlite3");
    let kept = || -> i64 {
        rusqlite::Connection::open(&db).and_then(|c| c.query_row("SELECT count(*) FROM notify_queue", [], |r| r.get(0))).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while kept() < 3 {
        assert!(Instant::now() < deadline, "the events were not kept");
        std::thread::sleep(Duration::from_millis(100));
    }
    let due = (now() / period + 1) * period;
    drop(serve);
    let digests = |tmp: &Path| outbox(tmp).into_iter().filter(|m| m.contains("Subject: [patchbay] digest:")).collect::<Vec<_>>();
    assert!(digests(tmp.path()).is_empty(), "nothing before the period ends");
    while now() <= due + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _again = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while digests(tmp.path()).is_empty() {
        assert!(Instant::now() < deadline, "no digest after the restart");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let sent = digests(tmp.path());
    assert_eq!(sent.len(), 1, "one digest: {sent:#?}");
    assert!(sent[0].contains("3 messages matched the rule digest"), "{}", sent[0]);
    for word in ["one", "two", "three"] {
        assert!(sent[0].contains(&format!("demo.event.{word}")), "{word}: {}", sent[0]);
    }
    assert!(sent[0].contains("To: maint@example.org"), "{}", sent[0]);
}

/// Admins manage notification rules over HTTP: a rule added is in force at once and after a
/// restart; one whose receiver refuses is given up, listed with why, and sent again on request;
/// a removed rule sends nothing more; the config file's rules are not the API's to change.
#[test]
fn admins_add_list_and_remove_notification_rules_and_see_what_was_given_up() {
    let Some(py) = python_with("json") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_receiver, log, hook_port) = start_receiver(&py, tmp.path(), 0);
    let port = free_port();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\nadmin_tokens = {{ ops = \"0123456789abcdef-ops\" }}\n\
             [ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"ci\"\n\
             [[notify]]\nname = \"from-file\"\nemail = \"maint@example.org\"\ntopics = [\"demo.never.#\"]\n"
        ),
    )
    .unwrap();
    let start = || {
        let serve = Serve(bin().arg("--config").arg(&config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_method("GET", port, "/healthz", "", "").0 != 200 {
            assert!(Instant::now() < deadline, "serve did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    };
    let mut serve = start();
    let ops = "Authorization: Bearer 0123456789abcdef-ops\r\nContent-Type: application/json\r\n";
    let call = |method: &str, path: &str, body: &str| -> (u16, serde_json::Value) {
        let (status, text) = http_method(method, port, path, ops, body);
        let json = text.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or_default();
        (status, json)
    };
    let hook = |name: &str, path: &str| {
        serde_json::json!({"name": name, "webhook": format!("http://127.0.0.1:{hook_port}{path}"), "secret": "hook-secret-1234", "topics": ["demo.event.#"]})
            .to_string()
    };
    assert_eq!(http_method("GET", port, "/api/v1/notify/rules", "", "").0, 401, "admins only");
    assert_eq!(http_raw(port, "/api/v1/notify/rules", "Content-Type: application/json\r\n", &hook("x", "/ok")).0, 401);
    // A receiver that hangs, first in line: it holds up no other rule.
    assert_eq!(call("POST", "/api/v1/notify/rules", &hook("slow", "/slow")).0, 201);
    assert_eq!(call("POST", "/api/v1/notify/rules", &hook("hook", "/ok")).0, 201);
    let (status, gone) = call("POST", "/api/v1/notify/rules", &hook("gone", "/gone"));
    assert_eq!(status, 201, "{gone}");
    assert_eq!(gone["created_by"], "ops");
    assert_eq!(gone["rule"]["secret"], "(set)", "the secret is never shown: {gone}");
    assert_eq!(call("POST", "/api/v1/notify/rules", &hook("hook", "/ok")).0, 409, "a name taken");
    assert_eq!(call("POST", "/api/v1/notify/rules", &hook("from-file", "/ok")).0, 409, "the config's");
    let (status, bad) = call("POST", "/api/v1/notify/rules", r#"{"name": "x", "email": "maint@example.org", "cadence": "sometimes"}"#);
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().starts_with("cadence:"), "names the key: {bad}");
    let (_, listed) = call("GET", "/api/v1/notify/rules", "");
    let rules: Vec<(String, String)> = listed["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_string(), r["source"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        rules,
        [("from-file", "config"), ("slow", "api"), ("hook", "api"), ("gone", "api")].map(|(a, b)| (a.to_string(), b.to_string()))
    );

    let publish = |word: &str| {
        let out =
            bin().arg("--config").arg(&config).args(["publish", "--topic", &format!("demo.event.{word}")]).arg("{}").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let hooks_on = |path: &str| -> Vec<serde_json::Value> {
        received_hooks(&log).into_iter().filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(path))).collect()
    };
    let wait_hooks = |path: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while hooks_on(path).len() < n {
            assert!(Instant::now() < deadline, "{n} requests on {path}: {:#?}", received_hooks(&log));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let published = Instant::now();
    publish("one");
    wait_hooks("/ok", 1);
    assert!(published.elapsed() < Duration::from_secs(10), "not held up by the hanging receiver: {:?}", published.elapsed());
    wait_hooks("/gone", 1);
    let dead = || -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, d) = call("GET", "/api/v1/notify/dead?rule=gone", "");
            let d = d["dead"].as_array().cloned().unwrap_or_default();
            if !d.is_empty() || Instant::now() > deadline {
                return d;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let given_up = dead();
    assert_eq!(given_up.len(), 1, "{given_up:#?}");
    assert_eq!(given_up[0]["topic"], "e2e.ci.demo.event.one");
    assert!(given_up[0]["error"].as_str().unwrap().contains("410"), "with why: {:#}", given_up[0]);

    // Rules added over HTTP survive a restart.
    drop(serve);
    serve = start();
    publish("two");
    wait_hooks("/ok", 2);
    wait_hooks("/gone", 2);
    let message = given_up[0]["message_id"].as_str().unwrap().to_string();
    let (status, again) = call("POST", &format!("/api/v1/notify/dead/gone/{message}/retry"), "");
    assert_eq!(status, 200, "{again}");
    wait_hooks("/gone", 3);
    assert_eq!(hooks_on("/gone")[2]["body"]["id"], message.as_str(), "the given-up one, sent again");
    assert_eq!(call("POST", &format!("/api/v1/notify/dead/hook/{message}/retry"), "").0, 404, "nothing given up there");

    assert_eq!(call("DELETE", "/api/v1/notify/rules/from-file", "").0, 409, "the config's rule is changed in the file");
    assert_eq!(call("DELETE", "/api/v1/notify/rules/gone", "").0, 200);
    assert_eq!(call("DELETE", "/api/v1/notify/rules/gone", "").0, 404);
    publish("three");
    wait_hooks("/ok", 3);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hooks_on("/gone").len(), 3, "a removed rule sends nothing more");
    let ok: Vec<String> = hooks_on("/ok").iter().map(|r| r["body"]["topic"].as_str().unwrap().to_string()).collect();
    assert_eq!(ok, ["one", "two", "three"].map(|w| format!("e2e.ci.demo.event.{w}")), "each once, in order");
    let db = tmp.path().join("data/patchbay.sqlite3");
    let added = topic_bodies(&db, "e2e.ci.notify.rule.added");
    assert_eq!(added.len(), 3);
    assert!(!added.iter().any(|a| a.to_string().contains("127.0.0.1")), "where a rule sends is not announced: {added:#?}");
    let removed = topic_bodies(&db, "e2e.ci.notify.rule.removed");
    assert_eq!((removed.len(), removed[0]["by"].as_str()), (1, Some("ops")));
    drop(serve);
}
