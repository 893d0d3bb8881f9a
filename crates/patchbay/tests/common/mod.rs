//! Helpers the binary's end-to-end tests share: the binary, free ports, HTTP GET, LMTP
//! delivery, series as `git format-patch` writes them, `patchbay run` processes, and a webhook
//! receiver.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use patchbay_fixtures::git;

/// The binary, with no config or data directory from the environment.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_patchbay"));
    c.env_remove("PATCHBAY_CONFIG").env_remove("PATCHBAY_DATA_DIR").env_remove("RUST_LOG");
    c
}

/// A port free now (the kernel may hand it out again later; tests take it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The mails of a series made from `changes` on a branch off `from`, cover letter first, as
/// `git format-patch` writes them (shallow thread), every `Date:` replaced by `date` when given.
pub fn format_series(repo: &Path, name: &str, from: &str, changes: &[(&str, &str)], blurb: &str, date: Option<&str>) -> Vec<String> {
    git(repo, &["checkout", "-q", "-b", name, from]);
    for (i, (file, content)) in changes.iter().enumerate() {
        std::fs::write(repo.join(file), content).unwrap();
        git(repo, &["add", file]);
        git(repo, &["commit", "-q", "-m", &format!("{name}: part {}", i + 1)]);
    }
    let out = repo.join(format!("out-{name}"));
    git(repo, &["format-patch", "-q", "--cover-letter", "--thread=shallow", "-o", &out.to_string_lossy(), &format!("{from}..{name}")]);
    git(repo, &["checkout", "-q", "main"]);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            // git names covers `<cover.<second>.git.<committer>>`: two series in one second would share it.
            let mail = std::fs::read_to_string(f)
                .unwrap()
                .replace("*** SUBJECT HERE ***", &format!("the {name} series"))
                .replace("*** BLURB HERE ***", blurb)
                .replace("<cover.", &format!("<cover-{name}."));
            match date {
                Some(date) => {
                    mail.lines().map(|l| if l.starts_with("Date: ") { format!("Date: {date}\n") } else { format!("{l}\n") }).collect()
                }
                None => mail,
            }
        })
        .collect()
}

/// Delivers `mails` over LMTP as an MTA would, as posted to `list` (the receiving ingest
/// settings decide which project claims them), checking each is stored.
pub fn lmtp_deliver(port: u16, list: &str, mails: &[String]) {
    use std::io::{BufRead as _, BufReader};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let expect = |code: &str, reader: &mut BufReader<std::net::TcpStream>| {
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
    };
    expect("220", &mut reader);
    writer.write_all(b"LHLO test\r\n").unwrap();
    expect("250", &mut reader);
    for mail in mails {
        writer.write_all(format!("MAIL FROM:<dev@example.org>\r\nRCPT TO:<list@{list}>\r\nDATA\r\n").as_bytes()).unwrap();
        expect("250", &mut reader);
        expect("250", &mut reader);
        expect("354", &mut reader);
        let body: String = mail.lines().map(|l| if l.starts_with('.') { format!(".{l}\r\n") } else { format!("{l}\r\n") }).collect();
        writer.write_all(format!("List-Id: <{list}>\r\n{body}.\r\n").as_bytes()).unwrap();
        expect("250", &mut reader);
    }
    writer.write_all(b"QUIT\r\n").unwrap();
}

/// GET `path` on a loopback port; the whole answer, or empty when nothing answers.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::Read as _;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A `patchbay run <service>` process, stopped (SIGTERM) when dropped; its stderr in a file.
pub struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    pub fn start(config: &Path, tmp: &Path, service: &str, extra: &[&str]) -> Proc {
        let log =
            tmp.join(format!("{service}-{}.log", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()));
        let child = bin()
            .arg("--config")
            .arg(config)
            .args(["run", service])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, name: service.to_string(), log }
    }

    /// SIGKILL: no shutdown, unsettled deliveries go back to their queues.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

pub fn wait_http(port: u16, path: &str, what: &str, procs: &[&Proc]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(port, path).starts_with("HTTP/1.1 200") {
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| format!("--- {}:\n{}", p.name, p.stderr())).collect();
            panic!("{what} did not answer {path}:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `p` has logged `needle` (a service logs "Service started" once its queue exists).
pub fn wait_log(p: &Proc, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.stderr().contains(needle) {
        assert!(Instant::now() < deadline, "{} never logged {needle:?}:\n{}", p.name, p.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_until(what: &str, secs: u64, procs: &[&Proc], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| format!("--- {}:\n{}", p.name, p.stderr())).collect();
            panic!("timed out waiting for {what}:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A webhook receiver (Python's standard library, a thread per request): it answers 410 to
/// every request on `/gone`, waits 20 s on `/slow`, answers 500 to the first `fail_first`
/// requests, then 200; it checks each body's `X-Patchbay-Signature-256` against `secret`, and
/// writes every request (its status, path, headers and body) as a JSON line to `log`.
pub const RECEIVER: &str = r#"
import hashlib, hmac, json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
secret, fail_first, log, port_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seen = {"n": 0}
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, self.headers.get("X-Patchbay-Signature-256", ""))
        seen["n"] += 1
        if self.path.startswith("/slow"):
            time.sleep(20)
        status = 410 if self.path.startswith("/gone") else 500 if seen["n"] <= fail_first else (200 if ok else 401)
        with open(log, "a") as f:
            f.write(json.dumps({"status": status, "path": self.path, "signed": ok, "event": self.headers.get("X-Patchbay-Event"),
                                "delivery": self.headers.get("X-Patchbay-Delivery"), "body": json.loads(body)}) + "\n")
        self.send_response(status); self.send_header("Content-Length", "0"); self.end_headers()
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
open(port_file + ".tmp", "w").write(str(s.server_address[1]))
import os; os.rename(port_file + ".tmp", port_file)
s.serve_forever()
"#;

/// Starts [`RECEIVER`] with the secret `hook-secret-1234`, failing its first `fail_first`
/// requests: the receiver, its log and its port.
pub fn start_receiver(py: &str, tmp: &Path, fail_first: u32) -> (Receiver, PathBuf, String) {
    let (log, port_file) = (tmp.join("hooks.jsonl"), tmp.join("hooks.port"));
    let receiver = Receiver(
        Command::new(py)
            .args(["-c", RECEIVER, "hook-secret-1234", &fail_first.to_string()])
            .arg(&log)
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !port_file.exists() {
        assert!(Instant::now() < deadline, "the receiver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = std::fs::read_to_string(&port_file).unwrap();
    (receiver, log, port)
}

/// The webhook receiver, stopped when dropped (a failing test too).
pub struct Receiver(Child);
impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The receiver's log, one JSON object per request.
pub fn received_hooks(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Raw HTTP: `method` on `path` with any headers (each ending in CRLF) and body; the status
/// and the whole answer.
pub fn http_method(method: &str, port: u16, path: &str, headers: &str, body: &str) -> (u16, String) {
    use std::io::Read as _;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    (out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), out)
}
