//! `patchbay serve` with an open-file limit of 1,024 under 2,000 idle LMTP and 2,000 idle
//! HTTP connections: `/healthz` keeps answering within a second and a real delivery gets
//! through. A client sending an endless DATA line is cut off with bounded memory.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IDLE_EACH: usize = 2_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A field of `/proc/<pid>/status` in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line[field.len()..].trim_start_matches(':').split_whitespace().next().unwrap().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The soft and hard open-file limits of process `pid` (`None`: unlimited).
fn nofile(pid: u32) -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut words = line["Max open files".len()..].split_whitespace().map(|w| w.parse().ok());
    (words.next().unwrap(), words.next().unwrap())
}

/// This test process holds 4,000 client sockets: raise its own soft limit to its hard limit.
fn raise_own_limit() {
    let me = std::process::id();
    let (soft, hard) = nofile(me);
    if soft.is_none_or(|s| s >= 2 * IDLE_EACH as u64 + 256) {
        return;
    }
    let hard = hard.map_or("unlimited".to_string(), |h| h.to_string());
    let ok = Command::new("prlimit").arg("--pid").arg(me.to_string()).arg(format!("--nofile={hard}:{hard}")).status().unwrap();
    assert!(ok.success(), "could not raise this test's open-file limit to {hard}");
    let (soft, _) = nofile(me);
    assert!(soft.is_none_or(|s| s >= 2 * IDLE_EACH as u64 + 256), "this test needs {} open files, has {soft:?}", 2 * IDLE_EACH + 256);
}

/// One `GET /healthz` on a new connection: whether it answered 200, and how long it took.
fn healthz(port: u16) -> (bool, Duration) {
    let start = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5)) else {
        return (false, start.elapsed());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return (false, start.elapsed());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    (out.starts_with("HTTP/1.1 200") && out.contains("\"ok\""), start.elapsed())
}

struct Lmtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Lmtp {
    fn connect(port: u16) -> Lmtp {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Lmtp { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        self.reader.read_line(&mut l)?;
        Ok(l)
    }

    /// Greeting, LHLO, one sender and recipient, up to the 354.
    fn start_data(&mut self) {
        let greeting = self.line().unwrap();
        assert!(greeting.starts_with("220 "), "greeting: {greeting:?}");
        self.writer.write_all(b"LHLO mta.example.org\r\n").unwrap();
        while !self.line().unwrap().starts_with("250 ") {}
        self.writer.write_all(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<list@example.org>\r\nDATA\r\n").unwrap();
        for want in ["250 ", "250 ", "354 "] {
            let l = self.line().unwrap();
            assert!(l.starts_with(want), "wanted {want:?}, got {l:?}");
        }
    }
}

fn serve(dir: &Path, http: u16, lmtp: u16) -> Child {
    let config = dir.join("patchbay.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[ingest]\nlmtp_listen = \"127.0.0.1:{lmtp}\"\n"),
    )
    .unwrap();
    let child = Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg(env!("CARGO_BIN_EXE_patchbay"))
        .arg("--config")
        .arg(&config)
        .args(["serve", "--no-runner"])
        .env_remove("PATCHBAY_CONFIG")
        .env_remove("PATCHBAY_DATA_DIR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !healthz(http).0 {
        assert!(Instant::now() < deadline, "serve did not become healthy: {}", std::fs::read_to_string(dir.join("serve.log")).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_connections_and_endless_lines_do_not_take_serve_down() {
    raise_own_limit();
    let tmp = tempfile::tempdir().unwrap();
    let (http, lmtp) = (free_port(), free_port());
    let server = serve(tmp.path(), http, lmtp);
    let pid = server.id();
    assert_eq!(nofile(pid).0, Some(1024), "prlimit execs serve itself, with the limit");

    // An endless DATA line: cut off long before its 200 MiB, with bounded memory.
    let rss_before = status_kib(pid, "VmRSS");
    let peak_rss = Arc::new(Mutex::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak_rss, sampling) = (peak_rss.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::SeqCst) {
                let rss = status_kib(pid, "VmRSS");
                let mut peak = peak_rss.lock().unwrap();
                *peak = (*peak).max(rss);
                drop(peak);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut endless = Lmtp::connect(lmtp);
    endless.start_data();
    let started = Instant::now();
    let chunk = vec![b'x'; 1 << 20];
    let mut written = 0usize;
    for _ in 0..200 {
        if endless.writer.write_all(&chunk).is_err() {
            break;
        }
        written += chunk.len();
    }
    let reply = endless.line();
    let cut_after = started.elapsed();
    sampling.store(false, Ordering::SeqCst);
    sampler.join().unwrap();
    let hwm_after = status_kib(pid, "VmHWM");
    let peak = *peak_rss.lock().unwrap();
    eprintln!(
        "endless DATA line: {} MiB written before the cut, {cut_after:?}; reply {reply:?}; VmRSS {} MiB before, sampled peak {} MiB (+{} KiB), VmHWM {} MiB",
        written >> 20,
        rss_before >> 10,
        peak >> 10,
        peak.saturating_sub(rss_before),
        hwm_after >> 10
    );
    match &reply {
        Ok(l) => assert!(l.starts_with("552 ") || l.is_empty(), "the endless line was not refused: {l:?}"),
        Err(e) => assert!(
            matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
            "no reply to the endless line: {e}"
        ),
    }
    assert!(written < 100 << 20, "serve read {} MiB of one line without cutting it off", written >> 20);
    assert!(hwm_after.saturating_sub(rss_before) < 32 << 10, "serve's peak RSS grew {} KiB for one endless line", hwm_after - rss_before);

    // 2,000 idle connections on each listener (half of the HTTP ones in the middle of a
    // request head), while /healthz is asked all along.
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let polling = polling.clone();
        std::thread::spawn(move || {
            let (mut answers, mut fds) = (Vec::new(), 0);
            while polling.load(Ordering::SeqCst) {
                answers.push(healthz(http));
                fds = fds.max(open_fds(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            (answers, fds)
        })
    };
    let opening = Instant::now();
    let mut idle = Vec::with_capacity(2 * IDLE_EACH);
    for i in 0..IDLE_EACH {
        idle.push(TcpStream::connect(("127.0.0.1", lmtp)).unwrap());
        let mut h = TcpStream::connect(("127.0.0.1", http)).unwrap();
        if i % 2 == 1 {
            h.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow").unwrap();
        }
        idle.push(h);
    }
    let opened = opening.elapsed();
    // They sit; /healthz keeps being asked.
    std::thread::sleep(Duration::from_secs(3));

    // A real delivery, with every idle connection still open on this side.
    let delivering = Instant::now();
    let mut mta = Lmtp::connect(lmtp);
    mta.start_data();
    mta.writer
        .write_all(b"From: A <a@example.org>\r\nSubject: [PATCH] x: y\r\nMessage-ID: <limits-1@example.org>\r\n\r\nbody\r\n.\r\n")
        .unwrap();
    let stored = mta.line().unwrap();
    let delivered = delivering.elapsed();
    mta.writer.write_all(b"QUIT\r\n").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    polling.store(false, Ordering::SeqCst);
    let (answers, max_fds) = poller.join().unwrap();
    drop(idle);

    let slowest = answers.iter().map(|a| a.1).max().unwrap();
    let failed = answers.iter().filter(|a| !a.0).count();
    eprintln!(
        "{} connections opened in {opened:?}; /healthz asked {} times, {failed} failed, slowest {slowest:?}; delivery {stored:?} in {delivered:?}; serve held at most {max_fds} descriptors",
        2 * IDLE_EACH,
        answers.len()
    );
    let log = std::fs::read_to_string(tmp.path().join("serve.log")).unwrap();
    stop(server);
    assert!(stored.starts_with("250 2.0.0 stored"), "delivery: {stored:?}\n{log}");
    assert!(answers.len() >= 40, "too few /healthz answers: {}", answers.len());
    assert_eq!(failed, 0, "/healthz failed {failed} of {} times\n{log}", answers.len());
    assert!(slowest < Duration::from_secs(1), "/healthz took {slowest:?}");
    assert!(max_fds < 1024, "serve held {max_fds} descriptors");
    assert!(!log.contains("Too many open files"), "{log}");
}
