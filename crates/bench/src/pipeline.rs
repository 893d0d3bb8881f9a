//! `patchbay-bench pipeline`: series through the whole pipeline, as processes of the real
//! binary, in the three shapes side by side in one run: the embedded `patchbay serve`;
//! scale-out on RabbitMQ and PostgreSQL with one `patchbay run` process of each service;
//! and with two of each (both ingest hosts given every mail, as two MX hosts are). The
//! project's test is a no-op (`true`), so what is measured is patchbay: LMTP in, storing and
//! assembly, dispatch, `git am` in the sandbox, the verdict, the report into the outbox
//! maildir. Series go in one after another as fast as LMTP takes them; the report of each is
//! seen when its file appears. Printed per shape: series per second (from the first mail to
//! the last report) and p50, p99 and max from a series' last mail to its report, with the
//! load average beside them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::latency::{Lmtp, series_mails};

/// Options of `patchbay-bench pipeline`.
#[derive(Clone, Debug, clap::Args)]
pub struct PipelineBench {
    /// Series per shape.
    #[arg(long, default_value_t = 100)]
    series: usize,
    /// Patches per series (plus a cover letter).
    #[arg(long, default_value_t = 2)]
    patches: usize,
    /// The shapes to run, in this order.
    #[arg(long, value_delimiter = ',', default_value = "embedded,one,two")]
    shapes: Vec<Shape>,
    /// RabbitMQ for the scale-out shapes.
    #[arg(long, env = "PATCHBAY_TEST_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// A PostgreSQL role that may create databases (each shape gets a new one).
    #[arg(long, env = "PATCHBAY_TEST_PG_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg: String,
    /// The patchbay binary (default: beside this one).
    #[arg(long)]
    patchbay: Option<PathBuf>,
    /// Send every series from one address (as one person's many postings in one second: each
    /// mail then weighs every earlier series by its markers) instead of one address per series.
    #[arg(long)]
    one_submitter: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// How patchbay runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `patchbay serve`, SQLite.
    Embedded,
    /// One `patchbay run` process of each service on RabbitMQ and PostgreSQL.
    One,
    /// Two of each.
    Two,
}

const LIST: &str = "bench.patchbay.invalid";

/// What one shape did.
#[derive(Debug, serde::Serialize)]
struct Figures {
    shape: Shape,
    series: usize,
    series_per_second: f64,
    last_mail_to_report_ms: (f64, f64, f64),
    load_before: String,
    load_after: String,
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Processes stopped (SIGTERM, then waited for) when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// One host's config: `data`, `instance`, the project with its no-op test, and `extra` sections.
fn config(dir: &Path, name: &str, repo: &Path, extra: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data-{name}\"\n[identity]\ninstance = \"{name}\"\n[runner]\njobs = 2\n\
             # The benchmark's mails carry a fixed date: test them whatever their age.\n[dispatch]\nmax_age_secs = 0\n{extra}\n\
             [[project]]\nname = \"bench\"\nlist_ids = [\"{LIST}\"]\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"noop\"\nscript = \"true\"\narches = [\"{}\"]\n",
            repo.display(),
            std::env::consts::ARCH
        ),
    )?;
    Ok(path)
}

impl PipelineBench {
    fn binary(&self) -> anyhow::Result<PathBuf> {
        match &self.patchbay {
            Some(p) => Ok(p.clone()),
            None => Ok(std::env::current_exe()?.with_file_name("patchbay")),
        }
    }

    fn spawn(&self, dir: &Path, config: &Path, args: &[&str]) -> anyhow::Result<Child> {
        let log = std::fs::File::create(dir.join(format!("{}.log", args.join("-").replace([':', '.', '/'], "_"))))?;
        Command::new(self.binary()?)
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary().unwrap_or_default().display()))
    }

    /// Starts `shape` in `dir`; returns the processes, the LMTP ports and the outbox maildirs.
    async fn start(&self, shape: Shape, dir: &Path, repo: &Path) -> anyhow::Result<(Procs, Vec<u16>, Vec<PathBuf>)> {
        let ns = format!("bench{}x{}", std::process::id(), patchbay_model::Uuid::now_v7().simple());
        if shape == Shape::Embedded {
            let (lmtp, http) = (free_port()?, free_port()?);
            let c =
                config(dir, "e", repo, &format!("[ingest]\nlmtp_listen = \"127.0.0.1:{lmtp}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n"))?;
            return Ok((Procs(vec![self.spawn(dir, &c, &["serve"])?]), vec![lmtp], vec![dir.join("data-e/outbox/new")]));
        }
        let url = patchbay_store_pg::testing::scratch_database(&self.pg).await.context("creating a scratch PostgreSQL database")?;
        let shared = format!(
            "[bus]\nbackend = \"amqp\"\nurl = \"{}\"\nexchange = \"{ns}\"\nprefix = \"bench\"\nenv = \"{ns}\"\n[store]\nurl = \"{url}\"\nmax_connections = 4\n",
            self.amqp
        );
        let hosts = if shape == Shape::One { vec!["a"] } else { vec!["a", "b"] };
        let (mut procs, mut ports, mut outboxes) = (Vec::new(), Vec::new(), Vec::new());
        for h in hosts {
            let c = config(dir, h, repo, &shared)?;
            let lmtp = free_port()?;
            ports.push(lmtp);
            outboxes.push(dir.join(format!("data-{h}/outbox/new")));
            procs.push(self.spawn(dir, &c, &["run", "ingest", "--lmtp", &format!("127.0.0.1:{lmtp}")])?);
            for service in ["dispatcher", "runner", "aggregator", "reporter"] {
                procs.push(self.spawn(dir, &c, &["run", service])?);
            }
        }
        Ok((Procs(procs), ports, outboxes))
    }

    async fn shape(&self, shape: Shape) -> anyhow::Result<Figures> {
        let tmp = tempfile::tempdir()?;
        let files: Vec<(String, String)> = (1..=self.patches).map(|k| (format!("file{k}.txt"), "line\n".to_string())).collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let repo = patchbay_fixtures::origin(tmp.path(), &files);
        let (_procs, ports, outboxes) = self.start(shape, tmp.path(), &repo).await?;
        let mut lmtp = Vec::new();
        for port in &ports {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let started = Instant::now();
            loop {
                match Lmtp::connect(addr).await {
                    Ok(c) => break lmtp.push(c),
                    Err(e) if started.elapsed() > Duration::from_secs(120) => {
                        return Err(e.context(format!("{shape:?}: LMTP never answered")));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        // Let every service declare its queues and start consuming.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let load_before = load();
        let first = Instant::now();
        let mut last_mail: HashMap<usize, Instant> = HashMap::new();
        let mut reported: HashMap<usize, Instant> = HashMap::new();
        let mut seen_files = std::collections::HashSet::new();
        let mut look = |reported: &mut HashMap<usize, Instant>| {
            for dir in &outboxes {
                let Ok(entries) = std::fs::read_dir(dir) else { continue };
                for e in entries.flatten() {
                    if !seen_files.insert(e.path()) {
                        continue;
                    }
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let n = text.lines().find_map(|l| l.strip_prefix("Subject: ")).and_then(|s| s.rsplit(' ').next()?.parse().ok());
                    if let Some(n) = n {
                        reported.entry(n).or_insert_with(Instant::now);
                    }
                }
            }
        };
        for n in 0..self.series {
            let mut mails = series_mails(n, self.patches);
            if !self.one_submitter {
                // Many people post to a list: one address per series.
                mails = mails.into_iter().map(|m| m.replace("<dev@example.org>", &format!("<dev{n}@example.org>"))).collect();
            }
            // Every ingest host gets every mail, at once.
            let mut sends = Vec::new();
            for c in lmtp.iter_mut() {
                let mails = &mails;
                sends.push(async move {
                    for m in mails {
                        c.deliver(m).await?;
                    }
                    anyhow::Ok(())
                });
            }
            for r in futures_util::future::join_all(sends).await {
                r?;
            }
            last_mail.insert(n, Instant::now());
            look(&mut reported);
        }
        let deadline = Instant::now() + Duration::from_secs(120 + self.series as u64 * 2);
        while reported.len() < self.series {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{shape:?}: {} of {} reports; the processes' logs are in {}",
                reported.len(),
                self.series,
                tmp.keep().display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            look(&mut reported);
        }
        let end = reported.values().max().copied().unwrap_or(first);
        let mut lat: Vec<f64> =
            (0..self.series).map(|n| reported[&n].saturating_duration_since(last_mail[&n]).as_secs_f64() * 1000.0).collect();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
        Ok(Figures {
            shape,
            series: self.series,
            series_per_second: self.series as f64 / end.duration_since(first).as_secs_f64(),
            last_mail_to_report_ms: (pct(0.5), pct(0.99), lat[lat.len() - 1]),
            load_before,
            load_after: load(),
        })
    }

    /// Runs every shape asked for, one after another, and prints their figures.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut all = Vec::new();
        for shape in self.shapes.clone() {
            let f = self.shape(shape).await?;
            if !self.json {
                println!(
                    "{:<9} {:>4} series  {:>6.2} series/s  last mail -> report  p50 {:>7.0} ms  p99 {:>7.0} ms  max {:>7.0} ms  load {} -> {}",
                    format!("{shape:?}"),
                    f.series,
                    f.series_per_second,
                    f.last_mail_to_report_ms.0,
                    f.last_mail_to_report_ms.1,
                    f.last_mail_to_report_ms.2,
                    f.load_before,
                    f.load_after
                );
            }
            all.push(f);
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        Ok(())
    }
}
