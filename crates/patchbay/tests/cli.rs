//! End-to-end tests of the `patchbay` binary as users run it: real processes,
//! real sockets, real SIGKILL.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_patchbay"));
    c.env_remove("PATCHBAY_CONFIG").env_remove("PATCHBAY_DATA_DIR").env_remove("RUST_LOG");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Setup {
    _tmp: tempfile::TempDir,
    config: PathBuf,
    port: u16,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"test\"\n"),
    )
    .unwrap();
    Setup { _tmp: tmp, config, port }
}

fn healthy(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200") && out.contains("\"ok\"")
}

fn serve(setup: &Setup) -> Child {
    let child = bin().arg("--config").arg(&setup.config).arg("serve").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(setup.port) {
        assert!(Instant::now() < deadline, "serve did not become healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn publish(config: &Path, n: u64) -> std::process::Output {
    bin()
        .arg("--config")
        .arg(config)
        .args(["publish", "--topic", "e2e.message.sent", "--json"])
        .arg(format!("{{\"n\":{n}}}"))
        .output()
        .unwrap()
}

/// serve + tail + publish; kill -9 serve mid-stream and restart it: nothing `publish`
/// reported as accepted is lost, and `tail` resumes with no gap and no repeat.
#[test]
fn publish_and_tail_survive_kill_9_of_serve() {
    let s = setup();
    let mut server = serve(&s);

    let mut tail = bin()
        .arg("--config")
        .arg(&s.config)
        .args(["tail", "--json", "--topic", "e2e.#"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let tail_out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(tail_out).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let tail_err = Arc::new(Mutex::new(String::new()));
    {
        let tail_err = tail_err.clone();
        let stderr = tail.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                tail_err.lock().unwrap().push_str(&(line.unwrap() + "\n"));
            }
        });
    }
    // Let tail connect: it starts from the log head, so publish a marker until it shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(publish(&s.config, 1_000_000).status.success());
        if lines.recv_timeout(Duration::from_millis(500)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "tail never showed anything");
    }

    const N: u64 = 60;
    let progress = Arc::new(AtomicU64::new(0));
    let publisher = {
        let config = s.config.clone();
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut results = Vec::new();
            for n in 0..N {
                let out = publish(&config, n);
                results.push((n, out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()));
                progress.store(n + 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(15));
            }
            results
        })
    };
    while progress.load(Ordering::SeqCst) < 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let mut server = serve(&s);
    let results = publisher.join().unwrap();

    let accepted: Vec<u64> = results.iter().filter(|r| r.1 == Some(0)).map(|r| r.0).collect();
    for (n, code, err) in &results {
        assert!(matches!(code, Some(0) | Some(75)), "publish {n} exited {code:?}: {err}");
    }
    assert!(accepted.len() >= N as usize - 2, "too few publishes accepted: {results:?}");

    let mut seen: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !accepted.iter().all(|n| seen.contains(n)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "tail is missing accepted messages; saw {seen:?}, accepted {accepted:?}");
        if let Ok(line) = lines.recv_timeout(left.min(Duration::from_millis(500))) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let n = v["body"]["n"].as_u64().unwrap();
            if n != 1_000_000 {
                seen.push(n);
            }
        }
    }
    // Nothing else arrives late (a repeat would show here).
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(700)) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(v["body"]["n"].as_u64().unwrap());
    }
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "tail repeated a message: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "tail out of order: {seen:?}");
    assert!(tail_err.lock().unwrap().contains("reconnecting"), "tail never noticed the kill");

    // Graceful stop on SIGTERM, with a stream still open.
    let term = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status().unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "serve exited {status} on SIGTERM");
    tail.kill().unwrap();
    tail.wait().unwrap();
}

#[test]
fn publish_exit_codes_say_what_happened() {
    let s = setup();
    // Bad input: 65, whether or not the daemon runs.
    let bad = bin().arg("--config").arg(&s.config).args(["publish", "--topic", "too.short", "--json", "{}"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(65), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("needs at least"));
    let not_json = bin().arg("--config").arg(&s.config).args(["publish", "--topic", "a.b.c", "--json", "{nope"]).output().unwrap();
    assert_eq!(not_json.status.code(), Some(65));
    let wrong_body = bin()
        .arg("--config")
        .arg(&s.config)
        .args(["publish", "--topic", "shell.message.logged", "--json", "{\"msg\":1}"])
        .output()
        .unwrap();
    assert_eq!(wrong_body.status.code(), Some(65));
    // No daemon and no fallback: 69.
    let down = bin().arg("--config").arg(&s.config).args(["publish", "--no-fallback", "--topic", "a.b.c", "hello"]).output().unwrap();
    assert_eq!(down.status.code(), Some(69));
    // No daemon, fallback to the store: 0, and the daemon serves it later.
    let direct = bin().arg("--config").arg(&s.config).args(["publish", "--topic", "a.b.c", "stored while down"]).output().unwrap();
    assert_eq!(direct.status.code(), Some(0), "{}", String::from_utf8_lossy(&direct.stderr));
    let id = String::from_utf8_lossy(&direct.stdout).trim().to_string();
    let mut server = serve(&s);
    let tail = bin().arg("--config").arg(&s.config).args(["tail", "--json", "--from-start"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut tail = KillOnDrop(tail);
    let mut line = String::new();
    BufReader::new(tail.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["id"], serde_json::json!(id));
    assert_eq!(v["body"]["message"], "stored while down");
    assert_eq!(v["schema"]["name"], "patchbay.log");
    assert!(v["signature"]["key_id"].is_string(), "messages are signed by default: {v}");
    server.kill().unwrap();
    server.wait().unwrap();
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn config_errors_name_file_key_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[bus]\nprefx = \"patchbay\"\n").unwrap();
    let out = bin().arg("--config").arg(&bad).args(["config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&bad.display().to_string()) && err.contains("bus.prefx") && err.contains("unknown field"), "{err}");

    std::fs::write(&bad, "[signing]\nkey = \"missing.key\"\n").unwrap();
    let out = bin().arg("--config").arg(&bad).args(["config", "check", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("signing.key"), "{v}");

    // A missing file: the OS's words once.
    let out = bin().arg("--config").arg(tmp.path().join("nosuch.toml")).args(["config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("nosuch.toml: cannot read the config file"), "{err}");
    // A syntax error keeps toml's display: the line, and a caret under the spot.
    std::fs::write(&bad, "[bus]\nprefix = \"a\"\nenv = dev\n").unwrap();
    let out = bin().arg("--config").arg(&bad).args(["config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3, column 7"), "{err}");
    assert!(err.lines().any(|l| l.trim_end() == "3 | env = dev"), "{err}");
    assert!(err.lines().any(|l| l.trim_start().starts_with('|') && l.trim_end().ends_with('^')), "no caret line: {err}");

    let good = tmp.path().join("good.toml");
    std::fs::write(&good, "[bus]\nprefix = \"org.example\"\nenv = \"prod\"\n").unwrap();
    let out = bin().arg("--config").arg(&good).args(["config", "check", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["topic_root"], "org.example.prod");
}

/// `serve` off a terminal writes plain text (no ANSI colours in log files or journald), says
/// at start that with no `[[project]]` nothing will be tested, and `query` with no match says so.
#[test]
fn serve_logs_plain_text_and_says_when_nothing_will_be_tested() {
    let s = setup();
    let log = s._tmp.path().join("serve.log");
    let child = bin()
        .arg("--config")
        .arg(&s.config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(s.port) {
        assert!(Instant::now() < deadline, "serve did not become healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").arg(server.0.id().to_string()).status();
    let _ = server.0.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "ANSI escapes in a log file: {text:?}");
    assert!(text.contains("No [[project]] in the config") && text.contains("no series will be tested"), "{text}");

    let out = bin().arg("--config").arg(&s.config).args(["query", "project=nosuch"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no message matches these filters") && !err.contains("page 1 of 0"), "{err}");
}

/// `tail` and `query` write a message the same way, one line: time, topic,
/// `service:instance#seq`, and the body's summary (not its JSON); heartbeats only on request.
#[test]
fn tail_and_query_show_one_readable_line_per_message() {
    let s = setup();
    // A project with a repository, so `serve` runs a runner, which sends heartbeats.
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config += "[runner]\nisolation = \"none\"\n[[project]]\nname = \"p\"\nlist_ids = [\"p.example.org\"]\nrepository = \"/nonexistent\"\n";
    std::fs::write(&s.config, config).unwrap();
    let server = serve(&s);
    let _server = KillOnDrop(server);
    let out = bin()
        .arg("--config")
        .arg(&s.config)
        .args(["publish", "--topic", "nightly.build.done", "nightly build\nfinished"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tail_lines = |extra: &[&str]| -> Vec<String> {
        let mut child = bin()
            .arg("--config")
            .arg(&s.config)
            .args(["tail", "--from-start"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let _child = KillOnDrop(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(3)) {
            lines.push(line);
        }
        lines
    };
    let lines = tail_lines(&[]);
    let shell = lines.iter().find(|l| l.contains("e2e.test.nightly.build.done")).unwrap_or_else(|| panic!("{lines:?}"));
    let words: Vec<&str> = shell.splitn(4, ' ').collect();
    assert!(words[0].ends_with('Z') && words[0].len() == 20, "time to the second: {shell}");
    assert_eq!(words[2], "shell:main#1", "{shell}");
    assert_eq!(words[3], "nightly build finished", "the body's summary, not its JSON: {shell}");
    assert!(!lines.iter().any(|l| l.contains("ci.runner.heartbeat")), "heartbeats are hidden: {lines:?}");
    let with = tail_lines(&["--heartbeats"]);
    let beat = with.iter().find(|l| l.contains("ci.runner.heartbeat")).unwrap_or_else(|| panic!("--heartbeats shows them: {with:?}"));
    assert!(beat.contains("runner:main#") && beat.contains("runner alive"), "{beat}");

    let out = bin().arg("--config").arg(&s.config).args(["query", "topic=e2e.test.nightly.build.done"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), shell.as_str(), "query writes the line as tail does");
}

/// The install step's commands: a completion script bash can source, and man pages `man` reads.
#[test]
fn completions_and_man_pages_come_from_the_command_line_definitions() {
    let out = bin().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(script.contains("_patchbay()") && script.contains("heartbeats"), "every option, tail's new one too");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("patchbay.bash"), &script).unwrap();
    let sourced = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" && complete -p patchbay")
        .arg("-")
        .arg(tmp.path().join("patchbay.bash"))
        .output()
        .unwrap();
    assert!(sourced.status.success() && String::from_utf8_lossy(&sourced.stdout).contains("patchbay"), "{sourced:?}");
    for shell in ["zsh", "fish"] {
        assert!(bin().args(["completions", shell]).output().unwrap().status.success(), "{shell}");
    }
    let page = bin().arg("man").output().unwrap();
    assert!(page.status.success());
    assert!(String::from_utf8_lossy(&page.stdout).starts_with(".ie \\n(.g .ds Aq"), "roff");
    let man1 = tmp.path().join("man1");
    let out = bin().arg("man").arg("--out").arg(&man1).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["patchbay.1", "patchbay-serve.1", "patchbay-tail.1", "patchbay-completions.1"] {
        let text = std::fs::read_to_string(man1.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".TH"), "{name}");
    }
    // What `man patchbay` shows, where man is installed.
    if let Ok(rendered) = Command::new("man").arg("-l").arg(man1.join("patchbay.1")).env("MANPAGER", "cat").env("PAGER", "cat").output()
        && rendered.status.success()
    {
        assert!(String::from_utf8_lossy(&rendered.stdout).contains("patchbay"), "{rendered:?}");
    }
}

#[test]
fn keygen_writes_a_usable_key_pair_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin().args(["--data-dir"]).arg(tmp.path()).args(["keygen", "--id", "serve-2026"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = std::fs::read_to_string(tmp.path().join("keys/serve-2026.pub")).unwrap();
    assert!(public.starts_with("patchbay-ed25519 ") && public.trim().ends_with(" serve-2026"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(public.trim()));
    let again = bin().args(["--data-dir"]).arg(tmp.path()).args(["keygen", "--id", "serve-2026"]).output().unwrap();
    assert!(!again.status.success(), "overwrote a key");
}

#[test]
fn schema_exports_the_envelope_and_every_body() {
    let out = bin().arg("schema").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["envelope"]["type"], "object");
    let names: Vec<&str> = v["bodies"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"patchbay.log"), "{names:?}");
    let tmp = tempfile::tempdir().unwrap();
    let out = bin().arg("schema").arg("--out").arg(tmp.path()).output().unwrap();
    assert!(out.status.success());
    assert!(tmp.path().join("envelope.schema.json").is_file());
    assert!(tmp.path().join("patchbay.log.v1.schema.json").is_file());
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["publish", "--help"],
        vec!["tail", "--help"],
        vec!["keygen", "--help"],
        vec!["config", "check", "--help"],
        vec!["schema", "--help"],
        vec!["dead-letters", "--help"],
    ] {
        let out = bin().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
    // The benchmarks are `patchbay-bench`, not part of the production binary.
    assert!(!bin().args(["bench", "bus", "--help"]).output().unwrap().status.success());
}

/// The same commands with `bus.backend = "amqp"`: `serve` publishes to RabbitMQ and
/// streams from its recorder's log; with `serve` killed, `publish` goes to RabbitMQ
/// directly, and the restarted `serve` still shows it to `tail`.
#[test]
fn serve_publish_and_tail_on_rabbitmq() {
    let url = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let ns = format!("e{}", uuid::Uuid::now_v7().simple());
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[ingest]\nlmtp_listen = \"\"\n[bus]\nbackend = \"amqp\"\nurl = \"{url}\"\nexchange = \"{ns}\"\nprefix = \"e2e\"\nenv = \"{ns}\"\n[identity]\ninstance = \"{ns}\"\n"
        ),
    )
    .unwrap();
    let s = Setup { _tmp: tmp, config, port };
    let mut server = serve(&s);
    let mut tail = KillOnDrop(
        bin()
            .arg("--config")
            .arg(&s.config)
            .args(["tail", "--json", "--from-start"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines) = mpsc::channel::<String>();
    let out = tail.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next_n = |lines: &mpsc::Receiver<String>| -> u64 {
        let line = lines.recv_timeout(Duration::from_secs(20)).expect("tail shows the message");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["body"]["n"].as_u64().unwrap()
    };
    for n in 0..5 {
        assert!(publish(&s.config, n).status.success());
    }
    assert_eq!((0..5).map(|_| next_n(&lines)).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);

    server.kill().unwrap();
    server.wait().unwrap();
    let direct = publish(&s.config, 5);
    assert!(direct.status.success(), "publish with serve down: {}", String::from_utf8_lossy(&direct.stderr));
    let mut server = serve(&s);
    assert_eq!(next_n(&lines), 5, "the message published while serve was down reaches tail");
    assert!(lines.recv_timeout(Duration::from_millis(700)).is_err(), "nothing repeated");
    server.kill().unwrap();
    server.wait().unwrap();
}

/// This machine's address on its network (not loopback), as a peer elsewhere would see it.
fn network_address() -> Option<std::net::IpAddr> {
    // Every address of the machine (`hostname -I`), else the source of a route outwards.
    let listed =
        Command::new("hostname").arg("-I").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    let usable = |ip: &std::net::IpAddr| !ip.is_loopback() && !ip.is_unspecified() && ip.is_ipv4();
    if let Some(ip) = listed.split_whitespace().filter_map(|a| a.parse().ok()).find(usable) {
        return Some(ip);
    }
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("8.8.8.8:53").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(usable)
}

/// The daemon signs what `POST /api/v1/publish` accepts, so only this host publishes without
/// a token: from the network address (another host, as far as `serve` can tell), a publish
/// needs an admin bearer token, given with `PATCHBAY_TOKEN`.
#[test]
fn publishing_from_another_host_needs_a_token() {
    let Some(ip) = network_address() else {
        assert!(std::env::var("CI").is_err(), "this machine has no network address to publish from; under CI that is a failure");
        eprintln!("SKIPPED: no network address on this machine to publish from");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = tmp.path().join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"0.0.0.0:{port}\"\nadmin_tokens = {{ ops = \"0123456789abcdef-ops\" }}\n\
             [ingest]\nlmtp_listen = \"\"\n[bus]\nprefix = \"e2e\"\nenv = \"test\"\n"
        ),
    )
    .unwrap();
    let setup = Setup { _tmp: tmp, config: config.clone(), port };
    let _serve = KillOnDrop(serve(&setup));
    let remote = format!("http://{ip}:{port}");
    let attempt = |token: Option<&str>, url: Option<&str>| {
        let mut c = bin();
        c.arg("--config").arg(&config).args(["publish", "--no-fallback", "--topic", "a.b.c"]);
        if let Some(url) = url {
            c.args(["--url", url]);
        }
        match token {
            Some(t) => c.env("PATCHBAY_TOKEN", t),
            None => c.env_remove("PATCHBAY_TOKEN"),
        };
        c.arg("hello").output().unwrap()
    };
    let refused = attempt(None, Some(&remote));
    assert_eq!(refused.status.code(), Some(65), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("admin bearer token"), "{}", String::from_utf8_lossy(&refused.stderr));
    let wrong = attempt(Some("not-the-token"), Some(&remote));
    assert_eq!(wrong.status.code(), Some(65));
    let allowed = attempt(Some("0123456789abcdef-ops"), Some(&remote));
    assert_eq!(allowed.status.code(), Some(0), "{}", String::from_utf8_lossy(&allowed.stderr));
    let local = attempt(None, Some(&format!("http://127.0.0.1:{port}")));
    assert_eq!(local.status.code(), Some(0), "this host needs no token: {}", String::from_utf8_lossy(&local.stderr));
}

/// The README's shell blocks, in order: each is a list of command lines (comments cut).
fn readme_blocks() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), l) => {
                // A comment after two spaces and a '#' is the README's, not the shell's word.
                let command = l.split("   #").next().unwrap_or(l).split("  # ").next().unwrap_or(l).trim_end();
                if !command.is_empty() && !command.starts_with('#') {
                    block.push(command.to_string());
                }
            }
            _ => {}
        }
    }
    blocks
}

/// A newcomer follows the README to the letter, with `patchbay` on the PATH as its install
/// step leaves it: the completions and man pages install as written (and the completion
/// script loads in bash), and with `serve` running, every `patchbay tail`, `publish` and
/// `query` line of "Using it" runs as written (tail until it is stopped).
#[test]
fn the_readme_commands_work_as_written() {
    let blocks = readme_blocks();
    let home = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_patchbay")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let shell = |line: &str, config: Option<&Path>| {
        let mut c = Command::new("bash");
        c.args(["-o", "pipefail", "-c", line]).env("PATH", &path).env("HOME", home.path()).current_dir(home.path());
        c.env_remove("PATCHBAY_CONFIG").env_remove("PATCHBAY_DATA_DIR").env_remove("RUST_LOG").env_remove("PATCHBAY_TOKEN");
        if let Some(config) = config {
            c.env("PATCHBAY_CONFIG", config);
        }
        c.output().unwrap()
    };

    // Install: the block that installs the completions and the man pages.
    let install = blocks.iter().find(|b| b.iter().any(|l| l.starts_with("patchbay completions"))).expect("an install block");
    for line in install {
        let out = shell(line, None);
        assert!(out.status.success(), "README: {line}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let completions = home.path().join(".local/share/bash-completion/completions/patchbay");
    let loaded = shell(&format!("source {} && complete -p patchbay", completions.display()), None);
    assert!(loaded.status.success(), "the completion script loads: {}", String::from_utf8_lossy(&loaded.stderr));
    assert!(home.path().join(".local/share/man/man1/patchbay.1").is_file(), "man patchbay has its page");

    // Using it: with serve running, the tail, publish and query lines of the README.
    let s = setup();
    let _serve = KillOnDrop(serve(&s));
    let using: Vec<&String> = blocks
        .iter()
        .filter(|b| b.iter().any(|l| l.starts_with("patchbay tail") || l.starts_with("patchbay query")))
        .flatten()
        .filter(|l| l.contains("patchbay ") && !l.starts_with("curl"))
        .collect();
    assert!(using.iter().any(|l| l.contains("patchbay publish")) && using.iter().any(|l| l.contains("patchbay query")), "{using:?}");
    for line in using {
        if line.starts_with("patchbay tail") {
            // tail runs until stopped: it must still be running after a moment, not have failed.
            let out = shell(&format!("timeout 2 {line}; test $? = 124"), Some(&s.config));
            assert!(out.status.success(), "README: {line}\n{}", String::from_utf8_lossy(&out.stderr));
        } else {
            let out = shell(line, Some(&s.config));
            assert!(out.status.success(), "README: {line}\n{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
