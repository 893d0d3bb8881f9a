//! Reports over a real SMTP server (aiosmtpd, started here on 127.0.0.1):
//! the report arrives threaded under the series; it arrives once after the
//! server was down for a while; `serve` killed while the server is taking
//! the report does not send it twice after a restart; and a submission server
//! that wants STARTTLS and AUTH gets the report, its body from the
//! maintainer's template.
//!
//! aiosmtpd comes from PyPI; `scripts/test` installs it and names its Python
//! in `PATCHBAY_TEST_PYTHON`. Without it these tests fail under `CI=true` and
//! say that they did not run otherwise.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIST: &str = "smtp.lists.example.org";

/// An SMTP server that stores what it gets in a maildir and answers the final dot `delay` seconds
/// later: a client killed in between has had its mail taken without hearing so.
const SERVER: &str = r#"
import asyncio, mailbox, sys, time
from aiosmtpd.controller import Controller
class Handler:
    def __init__(self, maildir, delay):
        self.box, self.delay = mailbox.Maildir(maildir, create=True), delay
    async def handle_DATA(self, server, session, envelope):
        self.box.add(envelope.original_content)
        await asyncio.sleep(self.delay)
        return '250 OK stored'
controller = Controller(Handler(sys.argv[2], float(sys.argv[3])), hostname='127.0.0.1', port=int(sys.argv[1]))
controller.start()
print('ready', flush=True)
while True:
    time.sleep(3600)
"#;

/// A submission server: STARTTLS required, or TLS from the start (with the certificate given), then AUTH required
/// (user `reporter`, password `s3cret-pass`); it records who logged in.
const SUBMISSION: &str = r#"
import mailbox, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, maildir, cert, key, logins, mode = sys.argv[1:7]
class Handler:
    def __init__(self):
        self.box = mailbox.Maildir(maildir, create=True)
    async def handle_DATA(self, server, session, envelope):
        self.box.add(envelope.original_content)
        return '250 OK stored'
def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b'reporter' and auth_data.password == b's3cret-pass'
    with open(logins, 'a') as f:
        f.write('%s %s %s\n' % (mechanism, auth_data.login.decode() if ok else '-', 'tls' if session.ssl or server.transport.get_extra_info('ssl_object') is not None else 'clear'))
    return AuthResult(success=ok)
tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)
if mode == 'starttls':
    controller = Controller(Handler(), hostname='127.0.0.1', port=int(port), tls_context=tls, require_starttls=True,
                            auth_required=True, auth_require_tls=True, authenticator=authenticator)
else:  # TLS from the first byte (submissions, port 465)
    # aiosmtpd hides AUTH under auth_require_tls unless STARTTLS ran; this socket is TLS already.
    controller = Controller(Handler(), hostname='127.0.0.1', port=int(port), ssl_context=tls,
                            auth_required=True, auth_require_tls=False, authenticator=authenticator)
controller.start()
print('ready', flush=True)
while True:
    time.sleep(3600)
"#;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> Option<String> {
    let py = std::env::var("PATCHBAY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py).args(["-c", "import aiosmtpd"]).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    if ok {
        return Some(py);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "aiosmtpd is not importable by {py}, and CI=true says this test must run: `{py} -m pip install aiosmtpd`, or run scripts/test, which installs it"
        );
    }
    eprintln!("NOTE: aiosmtpd is not installed for {py}: this SMTP test DID NOT RUN (scripts/test installs it)");
    None
}

fn smtp_server(py: &str, dir: &Path, port: u16, delay: f64) -> Proc {
    let received = dir.join("received").display().to_string();
    python_server(py, dir, SERVER, &[port.to_string(), received, delay.to_string()])
}

/// Runs a server script with `args`, once it says it is ready.
fn python_server(py: &str, dir: &Path, text: &str, args: &[String]) -> Proc {
    let script = dir.join("server.py");
    std::fs::write(&script, text).unwrap();
    let mut child = Command::new(py).arg(&script).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    Proc(child)
}

fn received(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(d) = std::fs::read_dir(dir.join("received").join(sub)) {
            out.extend(d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()));
        }
    }
    out
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_patchbay"));
    c.env_remove("PATCHBAY_CONFIG").env_remove("PATCHBAY_DATA_DIR").env_remove("RUST_LOG");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

use patchbay_fixtures::git;

/// A project and a config reporting over SMTP on `smtp_port`.
fn setup(tmp: &Path, smtp_port: u16) -> PathBuf {
    let repo = tmp.join("origin");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("test.sh"), "echo checked\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "base"]);
    let config = tmp.join("patchbay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{}\"\nadmin_tokens = {{ operator = \"operator-token-0123456789\" }}\n[ingest]\nlmtp_listen = \"\"\n\
             [report]\nfrom = \"patchbay <ci@example.org>\"\ndomain = \"ci.example.org\"\nsmtp_url = \"smtp://127.0.0.1:{smtp_port}\"\n\
             [[project]]\nname = \"demo\"\nlist_ids = [\"{LIST}\"]\nlist_address = \"dev@{LIST}\"\nrepository = \"{}\"\n\
             [[project.test]]\nname = \"check\"\nscript = \"sh test.sh\"\narches = [\"{}\"]\n",
            free_port(),
            repo.display(),
            std::env::consts::ARCH
        ),
    )
    .unwrap();
    config
}

/// Posts a one-patch series (serve must be running: its queues see what comes after them);
/// returns the cover letter's Message-ID.
fn post(tmp: &Path, config: &Path) -> String {
    let repo = tmp.join("origin");
    git(&repo, &["checkout", "-q", "-b", "work"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "-q", "-m", "docs: add a README"]);
    let out = repo.join("out");
    git(&repo, &["format-patch", "-q", "--cover-letter", "--thread=shallow", "-o", &out.to_string_lossy(), "main..work"]);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut cover = String::new();
    for f in files {
        let mail = std::fs::read_to_string(&f).unwrap().replace("*** SUBJECT HERE ***", "a README").replacen(
            "\n\n",
            &format!("\nList-Post: <mailto:dev@{LIST}>\n\n"),
            1,
        );
        if cover.is_empty() {
            cover =
                mail.lines().find_map(|l| l.strip_prefix("Message-ID: ").or_else(|| l.strip_prefix("Message-Id: "))).unwrap().to_string();
        }
        let mut c = bin().arg("--config").arg(config).args(["inject", "--list-id", LIST]).stdin(Stdio::piped()).spawn().unwrap();
        c.stdin.take().unwrap().write_all(mail.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success());
    }
    cover
}

fn wait_healthy(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let port: u16 = text.split("listen = \"127.0.0.1:").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
    wait_for("serve", 30, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
}

fn serve(config: &Path) -> Proc {
    let log = std::fs::File::create(config.with_file_name("serve.log")).unwrap();
    Proc(bin().arg("--config").arg(config).arg("serve").stdout(Stdio::null()).stderr(log).spawn().unwrap())
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn header(mail: &str, name: &str) -> String {
    // Unfold, then find (parsed, not grepped: continuation lines belong to their header).
    let head = mail.replace("\r\n", "\n");
    let head = head.split("\n\n").next().unwrap().replace("\n ", " ");
    head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string)).unwrap_or_default()
}

#[test]
fn the_report_arrives_threaded_once_after_the_server_comes_back() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let config = setup(tmp.path(), smtp_port);
    // The SMTP server is down while the series is tested and its verdict issued.
    let _serve = serve(&config);
    wait_healthy(&config);
    let cover = post(tmp.path(), &config);
    let db = tmp.path().join("data/patchbay.sqlite3");
    let log = tmp.path().join("serve.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    wait_for("the verdict", 60, || {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap_or_default());
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM verdicts WHERE verdict IS NOT NULL", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
            == 1
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(received(tmp.path()).is_empty());
    // It comes back: the report arrives, once.
    let _smtp = smtp_server(&py, tmp.path(), smtp_port, 0.0);
    let deadline = Instant::now() + Duration::from_secs(40);
    wait_for("the report", 90, || {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap_or_default());
        !received(tmp.path()).is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    let mails = received(tmp.path());
    assert_eq!(mails.len(), 1, "exactly one report");
    let mail = &mails[0];
    assert_eq!(header(mail, "Subject"), "Re: [PATCH 0/1] a README");
    assert_eq!(header(mail, "In-Reply-To"), cover);
    assert_eq!(header(mail, "References"), cover);
    assert_eq!(header(mail, "To"), "dev@example.org");
    assert_eq!(header(mail, "Cc"), format!("dev@{LIST}"));
    assert_eq!(header(mail, "X-Patchbay-Verdict"), "PASSED");
    assert!(mail.contains("apply") && mail.contains("check/"), "each result named: {mail}");
}

#[test]
fn killed_while_the_server_takes_the_report_it_is_not_sent_twice() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    // The server takes the mail at once but answers the final dot only after 4 s: serve is
    // killed in between, after sending and before recording.
    let _smtp = smtp_server(&py, tmp.path(), smtp_port, 4.0);
    let config = setup(tmp.path(), smtp_port);
    let mut first = serve(&config);
    wait_healthy(&config);
    post(tmp.path(), &config);
    let db = tmp.path().join("data/patchbay.sqlite3");
    let state = || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT state FROM reports", [], |r| r.get::<_, String>(0)))
            .unwrap_or_default()
    };
    wait_for("the report being sent", 60, || state() == "sending");
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill").args(["-KILL", &first.0.id().to_string()]).status();
    let _ = first.0.wait();
    // Restarted, it finds the report half-sent and does not send it again.
    let _second = serve(&config);
    wait_for("the report being settled", 60, || state() == "failed");
    wait_for("the server to store the one it got", 30, || received(tmp.path()).len() == 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(received(tmp.path()).len(), 1, "one mail, not two");
    let reason: String = rusqlite::Connection::open(&db).unwrap().query_row("SELECT detail FROM reports", [], |r| r.get(0)).unwrap();
    assert!(reason.contains("not resent"), "{reason}");

    // The operator's remedy: an admin re-sends it (here it had arrived, so now there are two).
    let port: u16 = std::fs::read_to_string(&config)
        .unwrap()
        .split("listen = \"127.0.0.1:")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (series, version): (i64, i64) = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT series_id, version FROM reports", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    let path = format!("/api/v1/reports/{series}/{version}/resend");
    assert!(http_post(port, &path, None).starts_with("HTTP/1.1 401"), "refused without a token");
    let answer = http_post(port, &path, Some("operator-token-0123456789"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_for("the report being sent again", 60, || state() == "sent");
    wait_for("the second copy", 30, || received(tmp.path()).len() == 2);
}

fn http_post(port: u16, path: &str, token: Option<&str>) -> String {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    s.write_all(format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (scripts/test installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A private CA and a certificate for 127.0.0.1 signed by it, as a site's own relay has.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA"],
    );
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "smtp.key", "-out", "smtp.csr", "-subj", "/CN=127.0.0.1"]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "smtp.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "smtp.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[test]
fn starttls_and_auth_with_the_maintainers_template() {
    submission("starttls", "smtp+starttls");
}

#[test]
fn tls_from_the_start_and_auth() {
    submission("tls", "smtps");
}

/// Reports through a submission server that wants `mode` ("starttls" or "tls") and AUTH, with
/// the maintainer's template.
fn submission(mode: &str, scheme: &str) {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    certificates(tmp.path());
    let smtp_port = free_port();
    let path = |name: &str| tmp.path().join(name).display().to_string();
    let _smtp = python_server(
        &py,
        tmp.path(),
        SUBMISSION,
        &[smtp_port.to_string(), path("received"), path("smtp.pem"), path("smtp.key"), path("logins"), mode.to_string()],
    );

    let config = setup(tmp.path(), smtp_port);
    std::fs::write(
        tmp.path().join("report.j2"),
        "Dear {{ thread.submitter }},\n\nOur verdict: {{ report.verdict }}.\n{% for l in report.lines %}* {{ l.what }}: {{ l.outcome }}\n{% endfor %}\n\
         -- \nThe team's own words, then patchbay's:\n{{ default_body }}",
    )
    .unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("smtp_url = \"smtp://127.0.0.1:{smtp_port}\"\n"),
        &format!(
            "smtp_url = \"{scheme}://127.0.0.1:{smtp_port}\"\nsmtp_user = \"reporter\"\nsmtp_password = \"s3cret-pass\"\n\
             smtp_ca_file = \"ca.pem\"\ntemplate = \"report.j2\"\n"
        ),
    );
    std::fs::write(&config, text).unwrap();
    let ok = bin().arg("--config").arg(&config).args(["config", "check"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let _serve = serve(&config);
    wait_healthy(&config);
    post(tmp.path(), &config);
    let log = tmp.path().join("serve.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    wait_for("the report", 90, || {
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap_or_default());
        !received(tmp.path()).is_empty()
    });
    let mails = received(tmp.path());
    assert_eq!(mails.len(), 1);
    let logins = std::fs::read_to_string(tmp.path().join("logins")).unwrap();
    assert_eq!(logins.lines().collect::<Vec<_>>(), ["PLAIN reporter tls"], "one AUTH, over TLS");
    let mail = &mails[0];
    assert_eq!(header(mail, "X-Patchbay-Verdict"), "PASSED");
    let body = mail.replace("\r\n", "\n");
    let body = body.split_once("\n\n").unwrap().1;
    assert!(body.starts_with("Dear dev@example.org,\n\nOur verdict: PASSED.\n* apply: PASSED\n* check/"), "{body}");
    assert!(body.contains("patchbay applied this series and every required test passed."), "the built-in text, included: {body}");
}

#[test]
fn a_template_with_an_error_is_refused_at_start_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), free_port());
    std::fs::write(tmp.path().join("report.j2"), "Verdict: {{ report.verdict }}\n{% for l in report.lines %}{{ l.oucome }}{% endfor %}\n")
        .unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace("[report]\n", "[report]\ntemplate = \"report.j2\"\n");
    std::fs::write(&config, text).unwrap();
    let out = bin().arg("--config").arg(&config).args(["config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "a config error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("report.template") && err.contains("report.j2") && err.contains("line 2"), "{err}");
    // A missing file is named too.
    std::fs::remove_file(tmp.path().join("report.j2")).unwrap();
    let out = bin().arg("--config").arg(&config).args(["config", "check"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("report.template") && err.contains("report.j2"), "{err}");
}
