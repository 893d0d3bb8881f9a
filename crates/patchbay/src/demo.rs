//! `patchbay demo`: the whole embedded system, offline. It makes a sample
//! project repository, starts `serve` on it, posts a good and a broken series
//! the way real mail arrives (an LMTP conversation), waits for both verdicts
//! and their reports in the outbox, says where to look, and keeps serving
//! until Ctrl-C.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Options of `patchbay demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its data (default ./patchbay-demo); it must be new or a previous demo's.
    #[arg(long, default_value = "patchbay-demo")]
    dir: PathBuf,
    /// Stop once both reports are written instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

const LIST: &str = "demo.patchbay.invalid";

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.org")
        .env("GIT_COMMITTER_NAME", "Ada Lovelace")
        .env("GIT_COMMITTER_EMAIL", "ada@example.org")
        .output()
        .context("running git (is it installed?)")?;
    anyhow::ensure!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The demo's first choice of HTTP port (LMTP takes the one below): beside `serve`'s 8025, so
/// both can run, and the same on every run, so a bookmarked dashboard keeps working.
pub const DEMO_HTTP_PORT: u16 = 8035;

/// The first free port of `preferred` and the nine after it (the same one run after run while
/// they stay busy or free), else any free port.
fn stable_port(preferred: u16, taken: &[u16]) -> anyhow::Result<u16> {
    for port in preferred..preferred.saturating_add(10) {
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    free_port()
}

/// The sample project: a greeting script and its test. Shell only, so any machine can run it.
fn make_project(repo: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(repo)?;
    git(repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("greet.sh"), "#!/bin/sh\nname=${1:-world}\necho \"Hello, $name!\"\n")?;
    std::fs::write(
        repo.join("test.sh"),
        "set -e\nsh greet.sh | grep -qx 'Hello, world!'\nsh greet.sh Ada | grep -qx 'Hello, Ada!'\necho 'all tests passed'\n",
    )?;
    git(repo, &["add", "."])?;
    git(repo, &["commit", "-q", "-m", "greet: the first greeting"])?;
    Ok(())
}

/// A series on a branch off main, as the mails `git format-patch` writes.
fn series(repo: &Path, name: &str, title: &str, blurb: &str, changes: &[(&str, &str, &str)]) -> anyhow::Result<Vec<Vec<u8>>> {
    git(repo, &["checkout", "-q", "-b", name, "main"])?;
    for (file, content, message) in changes {
        std::fs::write(repo.join(file), content)?;
        git(repo, &["add", file])?;
        git(repo, &["commit", "-q", "-m", message])?;
    }
    let out = repo.join(format!(".series-{name}"));
    git(repo, &["format-patch", "-q", "--cover-letter", "--thread=shallow", "-o", &out.to_string_lossy(), &format!("main..{name}")])?;
    git(repo, &["checkout", "-q", "main"])?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    let mut mails = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?
            .replace("*** SUBJECT HERE ***", title)
            .replace("*** BLURB HERE ***", blurb)
            .replace("<cover.", &format!("<cover-{name}."))
            .replacen("\n\n", &format!("\nList-Id: Demo list <{LIST}>\nList-Post: <mailto:demo@{LIST}>\n\n"), 1);
        mails.push(text.into_bytes());
    }
    std::fs::remove_dir_all(&out)?;
    Ok(mails)
}

/// Delivers mails over LMTP, as Postfix would.
fn lmtp_deliver(port: u16, mails: &[Vec<u8>]) -> anyhow::Result<()> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).context("connecting to the LMTP listener")?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let expect = |r: &mut BufReader<std::net::TcpStream>, code: &str| -> anyhow::Result<()> {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            anyhow::ensure!(line.starts_with(code), "LMTP: expected {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    };
    expect(&mut reader, "220")?;
    w.write_all(b"LHLO demo.patchbay.invalid\r\n")?;
    expect(&mut reader, "250")?;
    for mail in mails {
        w.write_all(format!("MAIL FROM:<ada@example.org>\r\nRCPT TO:<demo@{LIST}>\r\nDATA\r\n").as_bytes())?;
        expect(&mut reader, "250")?;
        expect(&mut reader, "250")?;
        expect(&mut reader, "354")?;
        for line in String::from_utf8_lossy(mail).lines() {
            let line = if line.starts_with('.') { format!(".{line}") } else { line.to_string() };
            w.write_all(line.as_bytes())?;
            w.write_all(b"\r\n")?;
        }
        w.write_all(b".\r\n")?;
        expect(&mut reader, "250")?;
    }
    w.write_all(b"QUIT\r\n")?;
    Ok(())
}

/// `patchbay demo`.
pub async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)?;
    let ours = std::fs::read_to_string(dir.join("patchbay.toml")).is_ok_and(|t| t.starts_with("# Written by `patchbay demo`."));
    if dir.exists() && !ours {
        anyhow::bail!("{} exists and is not a previous demo's directory; pick another --dir", dir.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let repo = dir.join("project");
    make_project(&repo)?;
    let http = stable_port(DEMO_HTTP_PORT, &[])?;
    let lmtp = stable_port(http - 1, &[http])?;
    // An admin token for the dashboard's buttons (re-run, waive), random per demo.
    let mut seed = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
    let token: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let config_path = dir.join("patchbay.toml");
    std::fs::write(
        &config_path,
        format!(
            "# Written by `patchbay demo`.\ndata_dir = \"data\"\n\n[http]\nlisten = \"127.0.0.1:{http}\"\nadmin_tokens = {{ demo = \"{token}\" }}\n\n[ingest]\nlmtp_listen = \"127.0.0.1:{lmtp}\"\n\n\
             [report]\nfrom = \"patchbay demo <patchbay@{LIST}>\"\ndomain = \"{LIST}\"\n\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nlist_address = \"demo@{LIST}\"\nrepository = \"{}\"\nbranch = \"main\"\n\n\
             [[project.test]]\nname = \"check\"\nscript = \"sh test.sh\"\narches = [\"{}\"]\ntime_limit_secs = 60\n\n[runner]\njobs = 2\n",
            repo.display(),
            std::env::consts::ARCH
        ),
    )?;
    let config = patchbay_config::Config::from_file(&config_path)?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let serve_args = crate::serve::ServeArgs::default();
    let server = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        crate::serve::serve(config, &serve_args, stop).await
    });

    // Wait for the listeners.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", lmtp)).is_err() {
        anyhow::ensure!(!server.is_finished(), "serve stopped during start-up (see the messages above)");
        anyhow::ensure!(Instant::now() < deadline, "serve did not start listening for LMTP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let good = series(
        &repo,
        "polite",
        "greet: say hello more politely",
        "This makes the greeting a little warmer.",
        &[
            ("greet.sh", "#!/bin/sh\nname=${1:-world}\necho \"Hello, $name!\"\necho 'Have a nice day.'\n", "greet: wish a nice day"),
            ("README", "greet.sh prints a greeting.\n", "README: say what greet.sh does"),
        ],
    )?;
    let broken = series(
        &repo,
        "broken",
        "greet: shout",
        "Louder is better.",
        &[("greet.sh", "#!/bin/sh\nname=${1:-world\necho \"HELLO, $name!\"\n", "greet: shout the greeting")],
    )?;
    lmtp_deliver(lmtp, &good)?;
    lmtp_deliver(lmtp, &broken)?;
    println!("patchbay demo: posted two series to the demo list over LMTP; testing them…");

    let outbox = dir.join("data/outbox/new");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let n = std::fs::read_dir(&outbox).map(|d| d.count()).unwrap_or(0);
        if n >= 2 {
            break;
        }
        anyhow::ensure!(!server.is_finished(), "serve stopped (see the messages above)");
        anyhow::ensure!(Instant::now() < deadline, "the reports did not arrive within 3 minutes (see the messages above)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut reports: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(&outbox)? {
        let text = std::fs::read_to_string(entry?.path())?;
        let get = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("").trim().to_string();
        reports.push((get("Subject:"), get("X-Patchbay-Verdict:")));
    }
    reports.sort();
    println!();
    for (subject, verdict) in &reports {
        println!("  {verdict:<8} {subject}");
    }
    println!();
    println!("Reports (threaded replies, ready to mail): {}", outbox.display());
    println!("Events as they happen:   patchbay --config {} tail", config_path.display());
    println!("Dashboard:               http://127.0.0.1:{http}/  (live stream: /live)");
    println!("Admin token (buttons):   {token}");
    println!("HTTP API:                http://127.0.0.1:{http}/api/openapi.json");
    println!("Config used:             {}", config_path.display());
    if args.exit {
        let _ = stop_tx.send(true);
    } else {
        println!("\nServing; Ctrl-C to stop.");
        crate::tasks::shutdown_signal().await;
        let _ = stop_tx.send(true);
    }
    server.await??;
    Ok(())
}
