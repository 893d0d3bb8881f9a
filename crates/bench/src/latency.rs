//! `patchbay-bench latency`: how fast the embedded system reacts. `serve`
//! runs in-process on a scratch data directory (no runner in it) with a
//! project whose verdict needs `build`; an SMTP sink on 127.0.0.1 stands for
//! the list's mail server. For each of N series, one after another:
//! 1. the cover letter and the first patches go in over LMTP, then the clock
//!    starts and the last patch goes in; the clock stops when the series'
//!    jobs (`apply` and `build`) are delivered from their queues: **mail →
//!    jobs**;
//! 2. the benchmark answers both jobs as a runner would (`ci.test.finished`
//!    PASSED); the clock starts as the last result is published and stops when
//!    the SMTP sink has read the end of that series' report: **result →
//!    report**.
//!
//! p50, p99 and max of both are printed (`--json` for scripts).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use patchbay_bus::{Bus, Publisher, QueueSpec};
use patchbay_model::{BaseUsed, Sender, TestFinished, TestJob};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;

/// Options of `patchbay-bench latency`.
#[derive(Clone, Debug, clap::Args)]
pub struct LatencyBench {
    /// Series measured (after a few unmeasured warm-up ones).
    #[arg(long, default_value_t = 1000)]
    series: usize,
    /// Patches per series (plus a cover letter).
    #[arg(long, default_value_t = 3)]
    patches: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

const LIST: &str = "bench.patchbay.invalid";
const WARMUP: usize = 10;

/// The mails `git format-patch --cover-letter` would write for series `n`.
pub(crate) fn series_mails(n: usize, patches: usize) -> Vec<String> {
    let date = "Wed, 25 Nov 2026 12:00:00 +0000";
    let cover_id = format!("<bench-{n}-0@example.org>");
    let head = |k: usize, subject: &str, reply: bool| {
        let threading = if reply { format!("In-Reply-To: {cover_id}\nReferences: {cover_id}\n") } else { String::new() };
        format!(
            "From: Dev Eloper <dev@example.org>\nTo: list@{LIST}\nList-Id: Bench list <{LIST}>\nDate: {date}\n\
             Message-ID: <bench-{n}-{k}@example.org>\n{threading}Subject: [PATCH {k}/{patches}] {subject}\n\n"
        )
    };
    let mut mails = vec![format!("{}This is series {n}, for the latency benchmark.\n", head(0, &format!("bench: series {n}"), false))];
    for k in 1..=patches {
        mails.push(format!(
            "{}Change {k} of series {n}.\n\nSigned-off-by: Dev Eloper <dev@example.org>\n---\n file{k}.txt | 1 +\n 1 file changed, 1 insertion(+)\n\n\
             diff --git a/file{k}.txt b/file{k}.txt\nindex 0000000..1111111 100644\n--- a/file{k}.txt\n+++ b/file{k}.txt\n\
             @@ -1 +1,2 @@\n line\n+series {n} change {k}\n-- \n2.47.0\n",
            head(k, &format!("bench: change {k} of series {n}"), true)
        ));
    }
    mails
}

/// An LMTP client on one connection, as an MTA keeps it open.
pub(crate) struct Lmtp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Lmtp {
    pub(crate) async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Lmtp> {
        let (r, w) = tokio::net::TcpStream::connect(addr).await.context("connecting to LMTP")?.into_split();
        let mut lmtp = Lmtp { reader: BufReader::new(r), writer: w };
        lmtp.expect("220").await?;
        lmtp.writer.write_all(b"LHLO bench.patchbay.invalid\r\n").await?;
        lmtp.expect("250").await?;
        Ok(lmtp)
    }

    async fn expect(&mut self, code: &str) -> anyhow::Result<()> {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await?;
            anyhow::ensure!(line.starts_with(code), "LMTP: expected {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    pub(crate) async fn deliver(&mut self, mail: &str) -> anyhow::Result<()> {
        let mut wire = format!("MAIL FROM:<dev@example.org>\r\nRCPT TO:<list@{LIST}>\r\nDATA\r\n");
        for line in mail.lines() {
            if line.starts_with('.') {
                wire.push('.');
            }
            wire.push_str(line);
            wire.push_str("\r\n");
        }
        wire.push_str(".\r\n");
        self.writer.write_all(wire.as_bytes()).await?;
        for code in ["250", "250", "354", "250"] {
            self.expect(code).await?;
        }
        Ok(())
    }
}

/// A minimal SMTP server that accepts everything and tells, per report, the series it
/// answers (`X-Patchbay-Series`) and when its final dot was read.
async fn smtp_sink(listener: tokio::net::TcpListener, seen: mpsc::UnboundedSender<(i64, Instant)>) {
    while let Ok((stream, _)) = listener.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let _ = w.write_all(b"220 sink ESMTP\r\n").await;
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                    "DATA" => {
                        let _ = w.write_all(b"354 go on\r\n").await;
                        let mut series = None;
                        loop {
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                            if let Some(v) = line.strip_prefix("X-Patchbay-Series: ") {
                                series = v.split_whitespace().next().and_then(|id| id.parse::<i64>().ok());
                            }
                        }
                        if let Some(id) = series {
                            let _ = seen.send((id, Instant::now()));
                        }
                        b"250 queued\r\n"
                    }
                    "QUIT" => {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    }
                    _ => b"250 ok\r\n",
                };
                if w.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Takes the jobs of one queue as a runner would, and hands them to the benchmark.
async fn take_jobs(bus: Arc<dyn Bus>, queue: QueueSpec, jobs: mpsc::UnboundedSender<(TestJob, Instant)>) -> anyhow::Result<()> {
    let mut sub = bus.subscribe(queue).await?;
    loop {
        let delivery = sub.next().await?;
        let at = Instant::now();
        let job: TestJob = serde_json::from_value(delivery.envelope.body.clone())?;
        delivery.ack().await?;
        if jobs.send((job, at)).is_err() {
            return Ok(());
        }
    }
}

/// Percentiles of a sample in milliseconds.
#[derive(Debug, serde::Serialize)]
struct Spread {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn spread(mut samples: Vec<Duration>) -> Spread {
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1].as_secs_f64() * 1e3;
    Spread { p50_ms: pct(0.5), p99_ms: pct(0.99), max_ms: pct(1.0) }
}

/// `patchbay-bench latency`.
pub async fn run(opts: LatencyBench) -> anyhow::Result<()> {
    anyhow::ensure!(opts.series > 0 && opts.patches > 0, "--series and --patches must be at least 1");
    let dir = crate::bus::tempfile_dir()?;
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let smtp_port = smtp.local_addr()?.port();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let sink = tokio::spawn(smtp_sink(smtp, seen_tx));
    let arch = std::env::consts::ARCH;
    let config_path = dir.join("patchbay.toml");
    std::fs::write(
        &config_path,
        format!(
            // The series carry a fixed Date: tested whatever its age.
            "data_dir = \"data\"\n[dispatch]\nmax_age_secs = 0\n\n[report]\nfrom = \"patchbay <patchbay@{LIST}>\"\ndomain = \"{LIST}\"\nrecipients = \"both\"\n\
             smtp_url = \"smtp://127.0.0.1:{smtp_port}\"\n\n\
             [[project]]\nname = \"bench\"\nlist_ids = [\"{LIST}\"]\nlist_address = \"list@{LIST}\"\nrepository = \"{}\"\nbranch = \"main\"\n\n\
             [[project.test]]\nname = \"build\"\nscript = \"true\"\narches = [\"{arch}\"]\n",
            dir.join("origin").display()
        ),
    )?;
    let config = patchbay_config::Config::from_file(&config_path)?;
    let root = config.bus.root.clone();
    let args = patchbay::serve::ServeArgs { http: Some("127.0.0.1:0".parse()?), lmtp: Some("127.0.0.1:0".parse()?), no_runner: true };
    let running = patchbay::serve::start(config, &args).await?;
    let bus = running.bus.clone();

    // The benchmark is the runner: it takes the jobs from their queues.
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel();
    let mut takers = Vec::new();
    for (test, job_arch) in [(patchbay_model::APPLY_TEST, patchbay_ci::ANY_ARCH), ("build", arch)] {
        let pattern = patchbay_runtime::pattern(&root, &patchbay_ci::job_topic(test, job_arch))?;
        let queue = QueueSpec::new(patchbay_ci::job_queue(test, job_arch), vec![pattern]);
        takers.push(tokio::spawn(take_jobs(bus.clone(), queue, jobs_tx.clone())));
    }
    let publisher = Publisher::new(bus.clone(), root, Sender::new("runner", "bench"));
    let mut lmtp = Lmtp::connect(running.lmtp.context("no LMTP listener")?).await?;

    let total = WARMUP + opts.series;
    let (mut to_jobs, mut to_report) = (Vec::with_capacity(opts.series), Vec::with_capacity(opts.series));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let wait = Duration::from_secs(30);
    for n in 0..total {
        let mails = series_mails(n, opts.patches);
        let (last, first) = mails.split_last().expect("a series has mails");
        for mail in first {
            lmtp.deliver(mail).await?;
        }
        let start = Instant::now();
        lmtp.deliver(last).await?;
        let mut got: HashMap<String, TestJob> = HashMap::new();
        let mut arrived = start;
        while got.len() < 2 {
            let (job, at) = tokio::time::timeout(wait, jobs.recv())
                .await
                .with_context(|| format!("series {n}: its jobs did not come within {wait:?}"))?
                .context("job queues closed")?;
            anyhow::ensure!(job.series.name.ends_with(&format!("series {n}")), "a job of another series: {}", job.series.name);
            arrived = arrived.max(at);
            got.insert(job.test.clone(), job);
        }
        let id = got[patchbay_model::APPLY_TEST].series.id;
        let mut finished = Vec::new();
        for test in [patchbay_model::APPLY_TEST, "build"] {
            let job = &got[test];
            finished.push(TestFinished {
                job: job.job.clone(),
                series: job.series.clone(),
                test: job.test.clone(),
                arch: job.arch.clone(),
                required: job.required,
                outcome: patchbay_model::Outcome::Passed,
                reason: None,
                failed_patch: None,
                duration_ms: 1,
                base: Some(BaseUsed { commit: "0".repeat(40), reason: "branch main".into() }),
                excerpt: String::new(),
                log_bytes: 0,
                retrying: false,
                pre_existing: false,
                round: 0,
                recheck: vec![],
            });
        }
        publisher.publish(&finished[0]).await?;
        let published = Instant::now();
        publisher.publish(&finished[1]).await?;
        let reported = loop {
            let (series, at) = tokio::time::timeout(wait, seen.recv())
                .await
                .with_context(|| format!("series {n}: no report within {wait:?}"))?
                .context("SMTP sink stopped")?;
            if series == id {
                break at;
            }
        };
        if n >= WARMUP {
            to_jobs.push(arrived - start);
            to_report.push(reported - published);
        }
        if tty && n % 10 == 9 {
            eprint!("\r{}/{total} series", n + 1);
        }
    }
    if tty {
        eprint!("\r\x1b[K");
    }
    let (jobs_spread, report_spread) = (spread(to_jobs), spread(to_report));
    if opts.json {
        println!(
            "{}",
            serde_json::json!({ "series": opts.series, "patches": opts.patches, "mail_to_jobs": jobs_spread, "result_to_report": report_spread })
        );
    } else {
        println!("{} series of {} patches + cover, one after another, embedded bus, SMTP sink on 127.0.0.1", opts.series, opts.patches);
        let line = |what: &str, s: &Spread, target: f64| {
            println!(
                "  {what:<44} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  (target p99 < {target} ms: {})",
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                if s.p99_ms < target { "met" } else { "NOT met" }
            );
        };
        line("last mail over LMTP -> jobs delivered", &jobs_spread, 50.0);
        line("last result published -> report at SMTP", &report_spread, 100.0);
    }
    drop(lmtp);
    for t in takers {
        t.abort();
    }
    sink.abort();
    running.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
