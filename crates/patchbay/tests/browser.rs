//! The dashboard in a real browser: `patchbay demo` runs the whole pipeline,
//! then `tests/browser/dashboard.mjs` drives Debian's headless Chromium with
//! playwright-core against it (live stream without a reload, the series matrix,
//! re-run refused without a token and queued with one, a phone viewport).
//! A second test drives `tests/browser/tests-page.mjs` against a `serve` whose test passed
//! on a re-run: the tests page shows its flake rate.
//! Screenshots are kept in `target/browser-artifacts/`.
//!
//! `scripts/test` installs chromium and runs `npm ci` in `tests/browser`.
//! Without them this test fails under `CI=true` and says it did not run otherwise.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;

struct Demo(std::process::Child);
impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn missing(what: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{what}, and CI=true says the browser test must run: scripts/test installs it (as root: apt install chromium nodejs npm; npm ci --prefix tests/browser)"
        );
    }
    eprintln!("NOTE: {what}: the browser test DID NOT RUN (scripts/test installs it)");
}

/// The repository root and Chromium, or `None` (said, and
/// failed under `CI=true`) when something the browser tests need is missing.
fn browser() -> Option<(PathBuf, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_dir = root.join("tests/browser");
    let chromium = std::env::var("PATCHBAY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        missing(&format!("no Chromium at {chromium}"));
        return None;
    }
    if Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        missing("node is not installed");
        return None;
    }
    if !browser_dir.join("node_modules/playwright-core").exists() {
        missing("tests/browser/node_modules has no playwright-core (npm ci)");
        return None;
    }
    Some((root, chromium))
}

/// Runs the page script `script` of `tests/browser` with `args` and then the artifacts
/// directory, in Chromium; asserts it passed (its last line says `done`); returns the
/// artifacts directory.
fn page_checks(root: &std::path::Path, chromium: &str, script: &str, args: &[&str], done: &str) -> PathBuf {
    let artifacts = root.join("target/browser-artifacts");
    let out = Command::new("node")
        .arg(root.join("tests/browser").join(script))
        .args(args)
        .arg(&artifacts)
        .env("PATCHBAY_CHROMIUM", chromium)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "browser checks failed:\n{text}");
    assert!(text.contains(done), "{text}");
    artifacts
}

/// `patchbay serve` on `config`, once it answers on `port`.
fn serve_on(config: &std::path::Path, port: u16) -> Demo {
    let serve = Demo(common::bin().arg("--config").arg(config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    common::wait_until("serve answers", 30, &[], || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    serve
}

#[test]
fn the_dashboard_in_headless_chromium() {
    let Some((root, chromium)) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(["demo", "--dir"])
        .arg(tmp.path().join("demo"))
        .env_remove("PATCHBAY_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo(child);
    // The demo prints where to look once both reports are written, then keeps serving.
    let (mut base, mut token) = (None, None);
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Dashboard:") {
            base = rest.split_whitespace().next().map(|u| u.trim_end_matches('/').to_string());
        }
        if let Some(rest) = line.strip_prefix("Admin token (buttons):") {
            token = Some(rest.trim().to_string());
        }
        if line.starts_with("Config used:") {
            break;
        }
    }
    // Keep reading: a closed pipe would kill the demo at its next line of output.
    std::thread::spawn(move || lines.for_each(drop));
    let (base, token) = (base.expect("the demo printed its dashboard"), token.expect("the demo printed its admin token"));
    let artifacts = page_checks(&root, &chromium, "dashboard.mjs", &[&base, &token], "all browser checks passed");
    assert!(artifacts.join("series.png").is_file() && artifacts.join("live.png").is_file());
    // The re-sent report is a second file in the outbox, beside the first.
    let outbox = tmp.path().join("demo/data/outbox/new");
    let names: Vec<String> = std::fs::read_dir(&outbox).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "two reports and one re-send: {names:?}");
    assert!(names.iter().any(|n| n.ends_with(".resend1")), "{names:?}");
    series_api_mbox_applies(&base, &tmp.path().join("demo/project"), &tmp.path().join("clean"));
    drop(demo);
}

/// One HTTP GET on the demo; the body.
fn get(base: &str, path: &str) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    assert!(out.starts_with(b"HTTP/1.1 200"), "{path}: {}", String::from_utf8_lossy(&out[..split]));
    out[split + 4..].to_vec()
}

/// The series API finds the demo's good series by its title, and its mbox, as
/// `curl …/api/v1/series/{id}/mbox | git am` would take it, applies in a clean clone of the
/// demo's project, commit for commit.
fn series_api_mbox_applies(base: &str, project: &std::path::Path, clean: &std::path::Path) {
    let list: serde_json::Value = serde_json::from_slice(&get(base, "/api/v1/series?project=demo&per_page=10")).unwrap();
    assert!(list["total"].as_u64().unwrap() >= 2, "{list}");
    let good = list["series"].as_array().unwrap().iter().find(|s| s["name"] == "greet: say hello more politely").expect("the good series");
    let id = good["id"].as_i64().unwrap();
    let detail: serde_json::Value = serde_json::from_slice(&get(base, &format!("/api/v1/series/{id}"))).unwrap();
    let patches: Vec<&serde_json::Value> = detail["patches"].as_array().unwrap().iter().filter(|p| p["slot"] != 0).collect();
    assert_eq!(patches.len(), 2, "{detail}");
    assert!(patches.iter().all(|p| p["message_id"].as_str().unwrap().starts_with('<')), "{detail}");
    assert_eq!(detail["links"]["mbox"], format!("/api/v1/series/{id}/mbox"));
    let mbox = get(base, &format!("/api/v1/series/{id}/mbox"));
    let git = |dir: &std::path::Path, args: &[&str], stdin: Option<&[u8]>| {
        let mut c = Command::new("git");
        c.current_dir(dir).args(args).env("GIT_CONFIG_GLOBAL", "/dev/null").env("GIT_CONFIG_NOSYSTEM", "1");
        c.env("GIT_COMMITTER_NAME", "Tester").env("GIT_COMMITTER_EMAIL", "tester@example.org");
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    git(project.parent().unwrap(), &["clone", "-q", "--branch", "main", &project.to_string_lossy(), &clean.to_string_lossy()], None);
    git(clean, &["am", "-q", "-3"], Some(&mbox));
    let log = git(clean, &["log", "--format=%s", "-2"], None);
    assert_eq!(log, "README: say what greet.sh does\ngreet: wish a nice day\n");
}

/// A test that failed and then passed when run again (`retries`) shows its flake rate on the
/// tests page: 50.0% after one flaky series and one plain pass.
#[test]
fn the_tests_page_shows_flake_rates_in_headless_chromium() {
    let Some((root, chromium)) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let repo = patchbay_fixtures::origin(tmp.path(), &[("README", "base\n")]);
    let port = common::free_port();
    let config = tmp.path().join("patchbay.toml");
    let arch = std::env::consts::ARCH;
    // Unconfined, so the script can leave a mark: its first run ever fails, every later one passes.
    let mark = tmp.path().join("ran-once");
    let script = format!("if [ -e {0} ]; then echo fine; else touch {0}; echo flaked; exit 1; fi", mark.display());
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[ingest]\nlmtp_listen = \"\"\n\
             [runner]\njobs = 1\nisolation = \"none\"\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"browser.lists.example.org\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"check\"\nscript = '{script}'\narches = [\"{arch}\"]\nretries = 1\n",
            repo.display()
        ),
    )
    .unwrap();
    let serve = serve_on(&config, port);
    let base = format!("http://127.0.0.1:{port}");
    for (name, file) in [("flaky", "README"), ("plain", "NOTES")] {
        for mail in common::format_series(&repo, name, "main", &[(file, name)], "", None) {
            let mut c = common::bin()
                .arg("--config")
                .arg(&config)
                .args(["inject", "--list-id", "browser.lists.example.org"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), mail.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
        }
        // One series at a time, so the flaky one is the first to run the test.
        common::wait_until(&format!("the verdict on {name}"), 90, &[], || {
            let list: serde_json::Value = serde_json::from_slice(&get(&base, "/api/v1/series?project=demo")).unwrap();
            list["series"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x["name"] == format!("the {name} series") && !x["verdict"].is_null()))
        });
    }
    let row = format!("demo/check/{arch}");
    let artifacts = page_checks(&root, &chromium, "tests-page.mjs", &[&base, &row, "50.0%"], "all tests page checks passed");
    assert!(artifacts.join("tests.png").is_file());
    drop(serve);
}

/// The week (Monday 00:00 UTC) of `secs`, as the trends count them.
fn week_of(secs: i64) -> i64 {
    let (week, monday) = (7 * 86_400, 4 * 86_400);
    (secs - monday).div_euclid(week) * week + monday
}

/// The trends page drawn from a store of a few hundred series over twelve weeks, tested and
/// reported through the real pipeline (one in three fails its test); its JSON is checked
/// against the same store, and the plots in chromium.
#[test]
fn the_trends_page_draws_a_store_of_a_few_hundred_series() {
    let Some((root, chromium)) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let repo = patchbay_fixtures::origin(tmp.path(), &[("README", "base\n")]);
    let git = |args: &[&str]| patchbay_fixtures::git(&repo, args);
    // 240 one-patch series, each adding its own file (so each applies alone); every third
    // also adds a bad*.txt, which the test refuses.
    let n: usize = std::env::var("PATCHBAY_TRENDS_SERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(240);
    git(&["checkout", "-q", "-b", "many"]);
    for i in 0..n {
        std::fs::write(repo.join(format!("f{i}.txt")), format!("{i}\n")).unwrap();
        if i % 3 == 0 {
            std::fs::write(repo.join(format!("bad{i}.txt")), "bad\n").unwrap();
        }
        git(&["add", "."]);
        git(&["commit", "-q", "-m", &format!("s{i}: add file {i}")]);
    }
    let out = tmp.path().join("patches");
    // Unnumbered: each patch its own one-patch series.
    git(&["format-patch", "-q", "--no-numbered", "-o", &out.to_string_lossy(), "main..many"]);
    git(&["checkout", "-q", "main"]);
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), n);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut mbox = String::new();
    for (i, f) in files.iter().enumerate() {
        // Spread over the last twelve weeks, a few hours apart.
        let date = now - (i as i64 % 12) * 7 * 86_400 - (i as i64 / 12) * 3_600 - 7_200;
        let rfc = Command::new("date").args(["-u", "-R", "-d", &format!("@{date}")]).output().unwrap();
        let rfc = String::from_utf8(rfc.stdout).unwrap();
        let mail = std::fs::read_to_string(f).unwrap();
        let mail: String = mail
            .lines()
            .map(|l| {
                if l.starts_with("Date: ") {
                    format!("Date: {}\nMessage-ID: <trend-{i}@example.org>\n", rfc.trim())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        mbox.push_str(&mail);
    }
    std::fs::write(tmp.path().join("many.mbox"), &mbox).unwrap();
    let port = common::free_port();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[ingest]\nlmtp_listen = \"\"\n\
             [runner]\njobs = 2\nisolation = \"none\"\n\
             [[project]]\nname = \"trendy\"\nlist_ids = [\"trends.lists.example.org\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"check\"\nscript = '! ls bad*.txt >/dev/null 2>&1'\narches = [\"{}\"]\n",
            repo.display(),
            std::env::consts::ARCH
        ),
    )
    .unwrap();
    let serve = serve_on(&config, port);
    let import = common::bin()
        .arg("--config")
        .arg(&config)
        .args(["import", "--quiet", "--test", "--list-id", "trends.lists.example.org"])
        .arg(tmp.path().join("many.mbox"))
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let db = tmp.path().join("data/patchbay.sqlite3");
    let settled = || -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM reports WHERE state NOT IN ('intent', 'sending')", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while settled() < n as i64 {
        if std::time::Instant::now() > deadline {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let count = |sql: &str| -> String {
                let mut stmt = conn.prepare(sql).unwrap();
                let rows: Vec<String> = stmt
                    .query_map([], |r| Ok(format!("{}={}", r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                rows.join(" ")
            };
            panic!(
                "not every series reported in 300 s: series {}; verdicts {}; reports {}; results {}",
                count("SELECT state, count(*) FROM series GROUP BY state"),
                count("SELECT coalesce(verdict, 'undecided'), count(*) FROM verdicts GROUP BY 1"),
                count("SELECT state, count(*) FROM reports GROUP BY state"),
                count("SELECT test || ':' || outcome, count(*) FROM results GROUP BY 1"),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    // The JSON against the store: series per week, and first versions passing.
    let base = format!("http://127.0.0.1:{port}");
    let trends: serde_json::Value = serde_json::from_slice(&get(&base, "/api/v1/trends?weeks=13")).unwrap();
    let weeks: Vec<i64> = (0..13).map(|i| week_of(now) - (12 - i) * 7 * 86_400).collect();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(i64, Option<String>)> = conn
        .prepare(
            "SELECT s.date, v.verdict FROM series s LEFT JOIN verdicts v ON v.series_id = s.uid AND v.version = s.version AND v.round = 0
             WHERE s.project = 'trendy'",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), n);
    let project = trends["projects"].as_array().unwrap().iter().find(|p| p["project"] == "trendy").expect("the project");
    for (i, week) in weeks.iter().enumerate() {
        let in_week: Vec<&(i64, Option<String>)> = rows.iter().filter(|(d, _)| week_of(*d) == *week).collect();
        assert_eq!(project["series"][i].as_u64().unwrap(), in_week.len() as u64, "week {i}: {trends}");
        let decided: Vec<&&(i64, Option<String>)> = in_week.iter().filter(|(_, v)| v.is_some()).collect();
        let passed = decided.iter().filter(|(_, v)| v.as_deref() == Some("PASSED")).count();
        match project["first_version_passed"][i].as_f64() {
            Some(share) => assert!((share - passed as f64 / decided.len() as f64).abs() < 1e-9, "week {i}: {trends}"),
            None => assert!(decided.is_empty(), "week {i}: {trends}"),
        }
    }
    assert_eq!(project["series"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), n as u64);
    assert!(project["median_report_secs"].as_array().unwrap().iter().any(|v| v.as_f64().is_some_and(|s| s > 0.0)), "{trends}");
    assert!(trends["slowest"].as_array().unwrap().iter().any(|t| t["test"] == "check"), "{trends}");

    let artifacts = page_checks(&root, &chromium, "trends-page.mjs", &[&base, "trendy"], "all trends page checks passed");
    assert!(artifacts.join("trends.png").is_file());
    drop(serve);
}
